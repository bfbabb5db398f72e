"""One agent's side of one secure aggregation round: a state machine over the protocol's steps
(advertise keys, share keys, mask the input, confirm the survivors, unmask), in the actively
secure form (Bonawitz et al. 2017, section 6): it signs its keys and the survivors it is shown,
checks every other agent's certificate and signatures before it shares a key or reveals a
share, and refuses steps out of order and any unmask request that would reveal both secrets of
one agent."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from enum import StrEnum

import numpy as np

from fedstream.errors import FedstreamError, ProtocolViolation
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg import KEY_BYTES, prg, shamir
from fedstream.secagg.crypto import KeyPair, agree, context, open_sealed, seal
from fedstream.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    RevealedShare,
    Roster,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    unique,
)
from fedstream.secagg.signing import (
    Credentials,
    VerifyingKey,
    advertise_payload,
    signature_valid,
    survivors_payload,
)

_E = shamir.ELEMENT_BYTES


class ClientStep(StrEnum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    READY = "ready"  # holds the others' shares and its pairwise seeds: may mask
    CONFIRMED = "confirmed"  # signed the survivors: reveals shares for them only
    UNMASKED = "unmasked"


def share_key(run_id: str, round_id: str, secret: bytes, peer: bytes, a: str, b: str) -> bytes:
    """The AES-GCM key agents ``a`` and ``b`` seal shares under (the same from either side)."""
    low, high = sorted((a, b))
    return agree(secret, peer, context(run_id, round_id, "share-key", low, high))


def share_associated(run_id: str, round_id: str, sender: str, recipient: str) -> bytes:
    return context(run_id, round_id, "share", sender, recipient)


def pair_seed(run_id: str, round_id: str, secret: bytes, peer: bytes, a: str, b: str) -> bytes:
    """The seed of the pairwise mask of agents ``a`` and ``b`` (the same from either side)."""
    low, high = sorted((a, b))
    return agree(secret, peer, context(run_id, round_id, "mask", low, high))


def pair_sign(owner: str, peer: str) -> int:
    """+1 when ``owner`` adds the pair's mask, -1 when it subtracts it (so that the pair cancels)."""
    return 1 if owner < peer else -1


class ClientSession:
    """One agent in one round. Each step's method may be called once, in order; ``mask`` may be
    called for any number of chunks (the same chunk masks to the same bytes) until the agent
    confirms the survivors. ``participants``: the agents the scheduler selected for the round
    (from the agent's assignment, not from the aggregator): they fix the threshold and bound
    the roster."""

    def __init__(
        self, run_id: str, round_id: str, agent_id: str, spec: SecureAggregationSpec, credentials: Credentials,
        participants: Sequence[str],
    ) -> None:
        self.run_id, self.round_id, self.agent_id, self.spec = run_id, round_id, agent_id, spec
        self.credentials = credentials
        self.participants = frozenset(unique(participants, "the round's participants"))
        self.threshold = spec.threshold(len(self.participants))
        self.step = ClientStep.NEW
        self._c = KeyPair.generate()
        self._s = KeyPair.generate()
        self._seed = os.urandom(KEY_BYTES)
        self._advertised: AdvertiseKeys | None = None
        self._roster: Roster | None = None
        self._keys: dict[str, VerifyingKey] = {}  # roster member -> its identity's public key
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (share of s_sk, share of seed)
        self._pairs: list[tuple[bytes, int]] = []  # (pairwise seed, sign)
        self._senders: tuple[str, ...] = ()
        self._survivors: tuple[str, ...] = ()

    def _expect(self, step: ClientStep, doing: str) -> None:
        if self.step is not step:
            raise ProtocolViolation(f"cannot {doing} in step {self.step.value} (expected {step.value})")

    def _payload(self, agent_id: str, c_pk: bytes, s_pk: bytes) -> bytes:
        return advertise_payload(self.credentials.trust.tenant, self.run_id, self.round_id, agent_id, c_pk, s_pk)

    def advertise(self) -> AdvertiseKeys:
        """Step 0: the agent's public keys, signed with its identity key. Raises
        ProtocolViolation when the agent is not one of the round's participants."""
        self._expect(ClientStep.NEW, "advertise keys")
        if self.agent_id not in self.participants:
            raise ProtocolViolation(f"agent {self.agent_id!r} is not a participant of this round")
        signer = self.credentials.signer
        signature = signer.sign(self._payload(self.agent_id, self._c.public, self._s.public))
        self._advertised = AdvertiseKeys(self.agent_id, self._c.public, self._s.public, signature, signer.certificate)
        self.step = ClientStep.ADVERTISED
        return self._advertised

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Step 1: shares of the masking key and of the self-mask seed for every agent of the
        roster, each sealed to it. Raises ProtocolViolation, sharing nothing, for a roster that
        lacks this agent's keys, repeats an agent or a key, names an agent the scheduler did not
        select, holds fewer agents than the threshold or another threshold, or has an entry whose
        certificate or signature does not verify (naming the entry and why)."""
        self._expect(ClientStep.ADVERTISED, "share keys")
        self._check_roster(roster)
        ids = roster.ids()
        xs = list(range(1, len(ids) + 1))
        s_shares = shamir.split(self._s.secret, xs, roster.threshold)
        b_shares = shamir.split(self._seed, xs, roster.threshold)
        sealed = []
        for x, entry in zip(xs, roster.entries, strict=True):
            if entry.agent_id == self.agent_id:
                self._held[self.agent_id] = (s_shares[x], b_shares[x])
                continue
            key = share_key(
                self.run_id, self.round_id, self._c.secret, entry.c_pk, self.agent_id, entry.agent_id
            )
            plaintext = shamir.to_bytes(s_shares[x]) + shamir.to_bytes(b_shares[x])
            associated = share_associated(self.run_id, self.round_id, self.agent_id, entry.agent_id)
            sealed.append(EncryptedShare(self.agent_id, entry.agent_id, seal(key, plaintext, associated)))
        self._roster = roster
        self.step = ClientStep.SHARED
        return ShareKeys(self.agent_id, hashlib.sha256(self._seed).digest(), tuple(sealed))

    def _check_roster(self, roster: Roster) -> None:
        ids = roster.ids()
        if self._advertised not in roster.entries:
            raise ProtocolViolation("the roster does not hold this agent's keys")
        if len(set(ids)) != len(ids) or len({e.s_pk for e in roster.entries} | {e.c_pk for e in roster.entries}) != 2 * len(ids):
            raise ProtocolViolation("the roster lists an agent or a key twice")
        strangers = sorted(set(ids) - self.participants)
        if strangers:
            raise ProtocolViolation(f"the roster names agent {strangers[0]!r}, which the scheduler did not select")
        if roster.participants != len(self.participants) or roster.threshold != self.threshold \
                or len(ids) < self.threshold:
            raise ProtocolViolation(
                f"the roster's threshold {roster.threshold} of {len(ids)} agents ({roster.participants} "
                f"participants) does not follow the round's settings (threshold {self.threshold} of "
                f"{len(self.participants)} participants)"
            )
        for entry in roster.entries:
            self._keys[entry.agent_id] = self._verified(entry)

    def _verified(self, entry: AdvertiseKeys) -> VerifyingKey:
        """The identity key of a roster entry whose certificate and signature verify."""
        try:
            entry.check()
            key = self.credentials.trust.agent_key(entry.certificate, entry.agent_id)
        except FedstreamError as e:
            raise ProtocolViolation(f"roster entry {entry.agent_id!r} refused: {e.public}") from None
        if not signature_valid(key, entry.signature, self._payload(entry.agent_id, entry.c_pk, entry.s_pk)):
            raise ProtocolViolation(
                f"roster entry {entry.agent_id!r} refused: the signature over its keys does not verify "
                "(keys substituted, or signed for another round)"
            )
        return key

    def receive_shares(self, delivery: SharesDelivery) -> None:
        """Step 2: opens the shares the others sealed to this agent and derives the pairwise
        seeds with every agent that shared keys. Raises ProtocolViolation when the senders are not
        a large enough part of the roster, or a sender's share is missing or does not open."""
        self._expect(ClientStep.SHARED, "receive shares")
        roster = self._roster
        assert roster is not None
        senders = delivery.senders
        by_id = {e.agent_id: e for e in roster.entries}
        if (
            len(set(senders)) != len(senders)
            or not set(senders) <= by_id.keys()
            or self.agent_id not in senders
        ):
            raise ProtocolViolation(
                "the agents that shared keys must be distinct agents of the roster, this one too"
            )
        if len(senders) < roster.threshold:
            raise ProtocolViolation(
                f"only {len(senders)} agents shared keys, below the threshold {roster.threshold}"
            )
        got = {s.sender: s for s in delivery.shares if s.recipient == self.agent_id}
        if len(delivery.shares) != len(senders) - 1 or set(got) != set(senders) - {self.agent_id}:
            raise ProtocolViolation(
                "the delivery must hold exactly one share from every other agent that shared keys"
            )
        for sender, share in got.items():
            self._held[sender] = self._open(share, by_id[sender])
        self._pairs = [
            (
                pair_seed(self.run_id, self.round_id, self._s.secret, by_id[v].s_pk, self.agent_id, v),
                pair_sign(self.agent_id, v),
            )
            for v in senders
            if v != self.agent_id
        ]
        self._senders = tuple(senders)
        self.step = ClientStep.READY

    def _open(self, share: EncryptedShare, sender: AdvertiseKeys) -> tuple[int, int]:
        key = share_key(
            self.run_id, self.round_id, self._c.secret, sender.c_pk, self.agent_id, sender.agent_id
        )
        associated = share_associated(self.run_id, self.round_id, sender.agent_id, self.agent_id)
        plaintext = open_sealed(key, share.ciphertext, associated)
        if plaintext is None or len(plaintext) != 2 * _E:
            raise ProtocolViolation(f"the share from agent {sender.agent_id!r} does not open")
        try:
            return shamir.from_bytes(plaintext[:_E]), shamir.from_bytes(plaintext[_E:])
        except ValueError:
            raise ProtocolViolation(
                f"the share from agent {sender.agent_id!r} is not a field element"
            ) from None

    def mask(self, quantized: np.ndarray, offset: int) -> np.ndarray:
        """Step 3, for one chunk: ``quantized`` (uint64 ring elements ``offset ..``) plus the
        self mask and every pairwise mask, mod 2^64."""
        self._expect(ClientStep.READY, "mask an input")
        chunk = np.asarray(quantized, dtype=np.uint64).reshape(-1)
        out: np.ndarray = chunk + prg.mask(self._seed, offset, chunk.size)
        for seed, sign in self._pairs:
            stream = prg.mask(seed, offset, chunk.size)
            out = out + stream if sign > 0 else out - stream
        return out

    def _survivors_payload(self, survivors: Sequence[str]) -> bytes:
        return survivors_payload(self.credentials.trust.tenant, self.run_id, self.round_id, survivors)

    def confirm(self, survivors: Sequence[str]) -> SurvivorSignature:
        """Step 4, the consistency check, once: this agent's signature over the agents whose
        masked inputs the aggregator holds (U3); from then on it reveals shares for that list
        only. Raises ProtocolViolation for a list that repeats an agent, names one that did not
        share keys, leaves this agent out or is shorter than the threshold."""
        self._expect(ClientStep.READY, "confirm the survivors")
        roster = self._roster
        assert roster is not None
        if len(set(survivors)) != len(survivors) or not set(survivors) <= set(self._senders):
            raise ProtocolViolation("the survivors must be distinct agents that shared keys")
        if self.agent_id not in survivors or len(survivors) < roster.threshold:
            raise ProtocolViolation(
                f"the survivors must include this agent and number at least the threshold {roster.threshold}"
            )
        self._survivors = tuple(sorted(survivors))
        self.step = ClientStep.CONFIRMED
        return SurvivorSignature(self.agent_id, self.credentials.signer.sign(self._survivors_payload(self._survivors)))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 5, once: this agent's shares of the seeds of ``request.seed_of`` and of the
        masking keys of ``request.key_of``. Raises ProtocolViolation, revealing nothing, for a
        request whose survivors are not the ones this agent signed, that names an agent in both
        lists (that would unmask its input) or leaves out or adds agents (together they must be
        exactly the agents that shared keys), or that does not carry valid signatures of those
        survivors by at least the threshold of them (the consistency check)."""
        self._expect(ClientStep.CONFIRMED, "unmask")
        roster = self._roster
        assert roster is not None
        both = set(request.seed_of) & set(request.key_of)
        if both:
            raise ProtocolViolation(
                f"refused: the request asks for both secrets of agent {sorted(both)[0]!r}"
            )
        if tuple(sorted(request.seed_of)) != self._survivors or len(request.seed_of) != len(self._survivors):
            raise ProtocolViolation("the unmask request's survivors are not the ones this agent signed")
        if set(request.key_of) != set(self._senders) - set(self._survivors) or len(request.key_of) + len(
            request.seed_of
        ) != len(self._senders):
            raise ProtocolViolation("the unmask request must name each agent that shared keys exactly once")
        self._check_consistency(request.signatures, roster.threshold)
        self.step = ClientStep.UNMASKED
        return UnmaskResponse(
            self.agent_id,
            seeds=tuple(RevealedShare(v, self._held[v][1]) for v in request.seed_of),
            keys=tuple(RevealedShare(v, self._held[v][0]) for v in request.key_of),
        )

    def _check_consistency(self, signatures: Sequence[SurvivorSignature], threshold: int) -> None:
        """Raises ProtocolViolation unless at least ``threshold`` distinct survivors signed the
        survivors this agent signed (so no other list can have been signed by enough of them)."""
        payload = self._survivors_payload(self._survivors)
        signers = [s.agent_id for s in signatures]
        if len(set(signers)) != len(signers) or not set(signers) <= set(self._survivors):
            raise ProtocolViolation("refused to unmask: the survivors' signatures must come from distinct survivors")
        for s in signatures:
            if not signature_valid(self._keys[s.agent_id], s.signature, payload):
                raise ProtocolViolation(
                    f"refused to unmask: agent {s.agent_id!r}'s signature is not over the survivors this agent "
                    "signed (the aggregator showed agents different survivors)"
                )
        if len(signers) < threshold:
            raise ProtocolViolation(
                f"refused to unmask: only {len(signers)} survivors signed the survivors, below the threshold {threshold}"
            )
