"""The aggregator's side of one secure aggregation round: records the advertised (signed) keys,
relays the encrypted shares it cannot read, tracks the agents that advertised (U1), shared keys
(U2), uploaded (U3), signed the list of survivors (U4, the consistency check) and answered the
unmask request (U5), and reconstructs what removes the masks of the masked sum. Given the
tenant's ``Trust``, it refuses advertisements and signatures that every agent would refuse
(an honest aggregator's courtesy: the agents check them all themselves). Steps advance when the driver closes them (every agent answered, or its timeout
passed); a step closed with fewer agents than the threshold fails the round."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import numpy as np

from fedstream.errors import InvalidArgument, PermissionDenied, ProtocolViolation, SecureAggregationFailed
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg import FRACTION_BITS, RING_BITS, prg, shamir
from fedstream.secagg.client import pair_seed, pair_sign
from fedstream.secagg.crypto import public_of
from fedstream.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    Roster,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    unique,
)
from fedstream.secagg.quantize import check_ring, check_weight
from fedstream.secagg.signing import (
    Trust,
    VerifyingKey,
    advertise_payload,
    signature_valid,
    survivors_payload,
)

# Subsets of shares tried per secret before an agent's shares are declared inconsistent.
MAX_RECONSTRUCTION_TRIES = 64


def _seed_check(commitment: bytes) -> Callable[[bytes], bool]:
    return lambda seed: hashlib.sha256(seed).digest() == commitment


def _key_check(public: bytes) -> Callable[[bytes], bool]:
    return lambda secret: public_of(secret) == public


class ServerStep(StrEnum):
    ADVERTISE = "advertise"
    SHARE = "share_keys"
    UPLOAD = "upload"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Correction:
    """What to subtract from the masked sum: every survivor's self mask and the pairwise masks
    survivors shared with agents that dropped after sharing keys."""

    seeds: tuple[bytes, ...]
    pairs: tuple[tuple[bytes, int], ...]

    def chunk(self, offset: int, count: int) -> np.ndarray:
        total = np.zeros(count, dtype=np.uint64)
        for seed in self.seeds:
            total += prg.mask(seed, offset, count)
        for seed, sign in self.pairs:
            stream = prg.mask(seed, offset, count)
            total = total + stream if sign > 0 else total - stream
        return total

    def unmask(self, masked: np.ndarray, offset: int) -> np.ndarray:
        """The quantized sum of elements ``offset ..`` from the masked sum's chunk."""
        chunk = np.asarray(masked, dtype=np.uint64).reshape(-1)
        out: np.ndarray = chunk - self.chunk(offset, chunk.size)
        return out


class ServerSession:
    """One round's server side over its ``participants`` (the agents the plan selected)."""

    def __init__(
        self, run_id: str, round_id: str, participants: Sequence[str], spec: SecureAggregationSpec
    ) -> None:
        self.run_id, self.round_id, self.spec = run_id, round_id, spec
        self.participants = unique(sorted(participants), "participants")
        self.threshold = spec.threshold(len(self.participants))
        self.step = ServerStep.ADVERTISE
        self.reason = ""
        self._keys: dict[str, AdvertiseKeys] = {}
        self._roster: Roster | None = None
        self._shares: dict[str, ShareKeys] = {}
        self._uploaded: dict[str, int] = {}  # agent -> weight
        self._survivors: tuple[str, ...] | None = None
        self._identities: dict[str, VerifyingKey] = {}  # agent -> its identity key (with a Trust)
        self._confirmed: dict[str, SurvivorSignature] = {}
        self._request: UnmaskRequest | None = None
        self._answers: dict[str, UnmaskResponse] = {}
        self._suspects: set[str] = set()
        self._lagrange: dict[tuple[int, ...], list[int]] = {}

    # -- step bookkeeping -------------------------------------------------------------------

    def _expect(self, step: ServerStep, doing: str) -> None:
        if self.step is ServerStep.FAILED:
            raise SecureAggregationFailed(f"secure aggregation failed: {self.reason}")
        if self.step is not step:
            raise ProtocolViolation(f"cannot {doing} in step {self.step.value} (expected {step.value})")

    def fail(self, reason: str) -> NoReturn:
        """Fails the round for ``reason`` (later calls raise it too)."""
        self.step, self.reason = ServerStep.FAILED, reason
        raise SecureAggregationFailed(f"secure aggregation failed: {reason}")

    def _enough(self, count: int, step: str, did: str) -> None:
        if count < self.threshold:
            self.fail(
                f"{step}: only {count} of {len(self.participants)} participants {did}, below the threshold {self.threshold}"
            )

    def expected(self) -> frozenset[str]:
        """The agents the current step waits for."""
        if self.step is ServerStep.ADVERTISE:
            return frozenset(self.participants)
        if self.step is ServerStep.SHARE:
            return frozenset(self.roster().ids())
        if self.step is ServerStep.UPLOAD:
            return frozenset(self._shares)
        if self.step is ServerStep.CONSISTENCY:
            return frozenset(self.survivors())
        if self.step is ServerStep.UNMASK:
            return frozenset(s.agent_id for s in self.request().signatures)
        return frozenset()

    def answered(self) -> frozenset[str]:
        """The agents that answered the current step."""
        done: dict[ServerStep, Any] = {
            ServerStep.ADVERTISE: self._keys,
            ServerStep.SHARE: self._shares,
            ServerStep.UPLOAD: self._uploaded,
            ServerStep.CONSISTENCY: self._confirmed,
            ServerStep.UNMASK: self._answers,
        }
        return frozenset(done.get(self.step, ()))

    def complete(self) -> bool:
        """Whether every agent the current step waits for answered."""
        return self.answered() >= self.expected()

    def _participant(self, agent_id: str, among: Sequence[str] | frozenset[str], what: str) -> None:
        if agent_id not in among:
            raise PermissionDenied(f"agent {agent_id!r} is not {what} of this secure aggregation round")

    # -- AdvertiseKeys ----------------------------------------------------------------------

    def advertise(self, message: AdvertiseKeys, trust: Trust | None = None) -> None:
        """Records an agent's signed public keys. A replay of the same keys is accepted (nothing
        changes); other keys from an agent that advertised raise ProtocolViolation. With
        ``trust``, raises InvalidArgument for a certificate that is not the tenant's or not
        valid now, or a signature that does not verify, PermissionDenied for a certificate of
        another identity."""
        message.check()
        self._participant(message.agent_id, self.participants, "a participant")
        identity = None
        if trust is not None:
            identity = trust.agent_key(message.certificate, message.agent_id)
            signed = advertise_payload(trust.tenant, self.run_id, self.round_id, message.agent_id, message.c_pk,
                                       message.s_pk)
            if not signature_valid(identity, message.signature, signed):
                raise InvalidArgument("the signature over the advertised keys does not verify")
        if self.step is not ServerStep.ADVERTISE and self._keys.get(message.agent_id) == message:
            return
        self._expect(ServerStep.ADVERTISE, "advertise keys")
        known = self._keys.get(message.agent_id)
        if known is not None and known != message:
            raise ProtocolViolation(f"agent {message.agent_id!r} already advertised other keys")
        used = {k.s_pk for a, k in self._keys.items() if a != message.agent_id} | {
            k.c_pk for a, k in self._keys.items() if a != message.agent_id
        }
        if message.s_pk in used or message.c_pk in used:
            raise ProtocolViolation("a key another agent advertised cannot be advertised again")
        self._keys[message.agent_id] = message
        if identity is not None:
            self._identities[message.agent_id] = identity

    def close_advertise(self) -> Roster:
        """Ends AdvertiseKeys: the roster (U1). Fails the round below the threshold."""
        self._expect(ServerStep.ADVERTISE, "close the advertise step")
        self._enough(len(self._keys), "advertise keys", "advertised keys")
        entries = tuple(self._keys[a] for a in sorted(self._keys))
        self._roster = Roster(entries, len(self.participants), self.threshold)
        self.step = ServerStep.SHARE
        return self._roster

    def roster(self) -> Roster:
        """The roster; raises ProtocolViolation before the advertise step closed."""
        if self._roster is None:
            raise ProtocolViolation("the roster is not ready: the advertise step is still open")
        return self._roster

    # -- ShareKeys --------------------------------------------------------------------------

    def share_keys(self, message: ShareKeys) -> None:
        """Records an agent's encrypted shares: exactly one for every other agent of the
        roster. A replay of the same message is accepted; another one raises ProtocolViolation."""
        message.check()
        roster = self.roster()
        self._participant(message.agent_id, roster.ids(), "an agent that advertised keys")
        if self.step is not ServerStep.SHARE and self._shares.get(message.agent_id) == message:
            return
        self._expect(ServerStep.SHARE, "share keys")
        known = self._shares.get(message.agent_id)
        if known is not None and known != message:
            raise ProtocolViolation(f"agent {message.agent_id!r} already shared other keys")
        others = set(roster.ids()) - {message.agent_id}
        recipients = {s.recipient for s in message.shares}
        stray = sorted(recipients - others)
        if stray:
            raise PermissionDenied(
                f"shares may go only to the other agents of the roster ({stray[0]!r} is not one)"
            )
        if recipients != others:
            raise InvalidArgument(
                f"shares must go to every other agent of the roster ({len(others - recipients)} missing)"
            )
        self._shares[message.agent_id] = message

    def close_share(self) -> frozenset[str]:
        """Ends ShareKeys: the agents that shared keys (U2). Fails the round below the threshold."""
        self._expect(ServerStep.SHARE, "close the share step")
        self._enough(len(self._shares), "share keys", "shared keys")
        self.step = ServerStep.UPLOAD
        return frozenset(self._shares)

    def deliver(self, agent_id: str) -> SharesDelivery:
        """The shares addressed to ``agent_id`` by every agent that shared keys; raises
        ProtocolViolation before the share step closed, PermissionDenied for an agent outside U2."""
        if self.step in (ServerStep.ADVERTISE, ServerStep.SHARE):
            raise ProtocolViolation("the shares are not ready: the share step is still open")
        self._participant(agent_id, frozenset(self._shares), "an agent that shared keys")
        senders = tuple(sorted(self._shares))
        mine: list[EncryptedShare] = [
            s for a in senders if a != agent_id for s in self._shares[a].shares if s.recipient == agent_id
        ]
        return SharesDelivery(senders, tuple(mine))

    # -- MaskedInputCollection --------------------------------------------------------------

    def check_upload(self, agent_id: str) -> None:
        """Raises unless ``agent_id`` may upload a masked input now: ProtocolViolation
        (FAILED_PRECONDITION) for an agent that did not share keys or already uploaded, or
        outside the upload step."""
        self._expect(ServerStep.UPLOAD, "upload a masked input")
        if agent_id not in self._shares:
            raise ProtocolViolation(f"agent {agent_id!r} did not share keys in this secure aggregation round")
        if agent_id in self._uploaded:
            raise ProtocolViolation(f"agent {agent_id!r} already uploaded its masked input")

    def uploaded(self, agent_id: str, weight: int) -> None:
        """Records that ``agent_id``'s masked input, of ``weight``, was folded into the sum."""
        self.check_upload(agent_id)
        self._uploaded[agent_id] = check_weight(weight)

    def close_upload(self) -> tuple[str, ...]:
        """Ends MaskedInputCollection: the survivors (U3), which each of them is asked to sign.
        Fails the round below the threshold or when the sum could overflow the ring."""
        self._expect(ServerStep.UPLOAD, "close the upload step")
        self._enough(len(self._uploaded), "upload", "uploaded a masked input")
        try:
            check_ring(self.total_weight(), self.spec.clip_range)
        except SecureAggregationFailed as e:
            self.fail(e.public)
        self._survivors = tuple(sorted(self._uploaded))
        self.step = ServerStep.CONSISTENCY
        return self._survivors

    def total_weight(self) -> int:
        return sum(self._uploaded.values())

    def survivors(self) -> tuple[str, ...]:
        """The survivors (U3); raises ProtocolViolation before the upload step closed."""
        if self._survivors is None:
            raise ProtocolViolation("the survivors are not known yet: the upload step is still open")
        return self._survivors

    # -- ConsistencyCheck -------------------------------------------------------------------

    def confirm(self, signature: SurvivorSignature, trust: Trust | None = None) -> None:
        """Records a survivor's signature over the survivors. A replay is accepted; another
        signature raises ProtocolViolation. With ``trust``, raises InvalidArgument for a
        signature that does not verify with the key of the agent's certificate."""
        signature.check()
        survivors = self.survivors()
        self._participant(signature.agent_id, survivors, "a survivor")
        if self.step is not ServerStep.CONSISTENCY and self._confirmed.get(signature.agent_id) == signature:
            return
        self._expect(ServerStep.CONSISTENCY, "confirm the survivors")
        known = self._confirmed.get(signature.agent_id)
        if known is not None and known != signature:
            raise ProtocolViolation(f"agent {signature.agent_id!r} already signed the survivors")
        if trust is not None:
            signed = survivors_payload(trust.tenant, self.run_id, self.round_id, survivors)
            identity = self._identities.get(signature.agent_id)
            if identity is None or not signature_valid(identity, signature.signature, signed):
                raise InvalidArgument("the signature over the survivors does not verify")
        self._confirmed[signature.agent_id] = signature

    def close_consistency(self) -> UnmaskRequest:
        """Ends ConsistencyCheck: the unmask request, with the survivors' signatures (U4).
        Fails the round below the threshold."""
        self._expect(ServerStep.CONSISTENCY, "close the consistency check")
        self._enough(len(self._confirmed), "consistency check", "signed the survivors")
        survivors = self.survivors()
        dropped = tuple(sorted(set(self._shares) - set(survivors)))
        signatures = tuple(self._confirmed[a] for a in sorted(self._confirmed))
        self._request = UnmaskRequest(seed_of=survivors, key_of=dropped, signatures=signatures)
        self.step = ServerStep.UNMASK
        return self._request

    def request(self) -> UnmaskRequest:
        """The unmask request; raises ProtocolViolation before the consistency check closed."""
        if self._request is None:
            raise ProtocolViolation("unmasking has not started: the survivors have not all signed yet")
        return self._request

    # -- Unmasking --------------------------------------------------------------------------

    def unmask(self, response: UnmaskResponse) -> None:
        """Records a survivor's shares: one for each agent of the request, of the secret it
        asked for. A replay is accepted; another answer raises ProtocolViolation."""
        response.check()
        request = self.request()
        self._participant(response.agent_id, request.seed_of, "a survivor")
        if self.step is not ServerStep.UNMASK and self._answers.get(response.agent_id) == response:
            return
        self._expect(ServerStep.UNMASK, "unmask")
        known = self._answers.get(response.agent_id)
        if known is not None and known != response:
            raise ProtocolViolation(f"agent {response.agent_id!r} already answered the unmask request")
        if {s.owner for s in response.seeds} != set(request.seed_of) or {
            s.owner for s in response.keys
        } != set(request.key_of):
            raise ProtocolViolation("an unmask answer must hold one share for each agent of the request")
        self._answers[response.agent_id] = response

    def close_unmask(self) -> Correction:
        """Ends Unmasking: reconstructs every survivor's seed and every dropped agent's masking
        key, each checked against its commitment. Fails the round below the threshold, or naming
        an agent whose shares no subset reconstructs into its commitment."""
        self._expect(ServerStep.UNMASK, "close the unmask step")
        self._enough(len(self._answers), "unmask", "answered the unmask request")
        request, roster = self.request(), self.roster()
        keys = {e.agent_id: e for e in roster.entries}
        seeds = []
        for owner in request.seed_of:
            seeds.append(self._recover(owner, "seeds", _seed_check(self._shares[owner].seed_commitment)))
        pairs = []
        for owner in request.key_of:
            s_pk = keys[owner].s_pk
            secret = self._recover(owner, "keys", _key_check(s_pk))
            for u in request.seed_of:
                seed = pair_seed(self.run_id, self.round_id, secret, keys[u].s_pk, owner, u)
                pairs.append((seed, pair_sign(u, owner)))
        self.step = ServerStep.DONE
        return Correction(tuple(seeds), tuple(pairs))

    def _shares_of(self, owner: str, kind: str) -> dict[int, int]:
        roster = self.roster()
        out = {}
        for agent, answer in self._answers.items():
            for share in answer.seeds if kind == "seeds" else answer.keys:
                if share.owner == owner:
                    out[roster.point(agent)] = share.value
        return out

    def _coefficients(self, xs: tuple[int, ...]) -> list[int]:
        if xs not in self._lagrange:
            self._lagrange[xs] = shamir.lagrange_at_zero(xs)
        return self._lagrange[xs]

    def _recover(self, owner: str, kind: str, verify: Callable[[bytes], bool]) -> bytes:
        shares = self._shares_of(owner, kind)
        for xs in self._subsets(tuple(sorted(shares))):
            secret = shamir.combine([shares[x] for x in xs], self._coefficients(xs))
            if secret is not None and verify(secret):
                left_out = set(shares) - set(xs)
                if len(xs) == len(shares) - 1:  # one share disagreed with all the others
                    self._suspects.update(self.roster().ids()[x - 1] for x in left_out)
                return secret
        self.fail(
            f"agent {owner!r} sent inconsistent shares (no {self.threshold} of them give back its commitment)"
        )

    def _subsets(self, xs: tuple[int, ...]) -> itertools.islice[tuple[int, ...]]:
        """All the shares first, then all but one (one holder lying), then random subsets of
        threshold size: at most MAX_RECONSTRUCTION_TRIES in all."""
        t = self.threshold
        rng = random.Random(hash(xs))  # picks subsets of shares to try, no secret

        def candidates() -> Any:
            yield xs
            if len(xs) > t:
                for i in range(len(xs)):
                    yield xs[:i] + xs[i + 1 :]
            while len(xs) > t:
                yield tuple(sorted(rng.sample(xs, t)))

        return itertools.islice(candidates(), MAX_RECONSTRUCTION_TRIES)

    # -- figures ----------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """The round's secure aggregation figures for its lineage."""
        return {
            "protocol": "SecAgg (Bonawitz et al., CCS 2017), complete graph, signed keys and consistency check",
            "participants": len(self.participants),
            "advertised_keys": len(self._keys),
            "shared_keys": len(self._shares),
            "uploaded": len(self._uploaded),
            "signed_survivors": len(self._confirmed),
            "unmasked_with": len(self._answers),
            "dropped": sorted(set(self._shares) - set(self._uploaded)),
            "threshold": self.threshold,
            "ring": f"Z_2^{RING_BITS}",
            "fraction_bits": FRACTION_BITS,
            "inconsistent_shares_from": sorted(self._suspects),
            "step": self.step.value,
        }
