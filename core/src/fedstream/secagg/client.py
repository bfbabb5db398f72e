"""One agent's side of one secure aggregation round: a state machine over the protocol's steps
(advertise keys, share keys, mask the input, unmask), refusing steps out of order and any unmask
request that would reveal both secrets of one agent."""

from __future__ import annotations

import hashlib
import os
from enum import StrEnum

import numpy as np

from fedstream.errors import ProtocolViolation
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
    UnmaskRequest,
    UnmaskResponse,
)

_E = shamir.ELEMENT_BYTES


class ClientStep(StrEnum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    READY = "ready"  # holds the others' shares and its pairwise seeds: may mask
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
    called for any number of chunks (the same chunk masks to the same bytes) until ``unmask``."""

    def __init__(self, run_id: str, round_id: str, agent_id: str, spec: SecureAggregationSpec) -> None:
        self.run_id, self.round_id, self.agent_id, self.spec = run_id, round_id, agent_id, spec
        self.step = ClientStep.NEW
        self._c = KeyPair.generate()
        self._s = KeyPair.generate()
        self._seed = os.urandom(KEY_BYTES)
        self._roster: Roster | None = None
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (share of s_sk, share of seed)
        self._pairs: list[tuple[bytes, int]] = []  # (pairwise seed, sign)
        self._senders: tuple[str, ...] = ()

    def _expect(self, step: ClientStep, doing: str) -> None:
        if self.step is not step:
            raise ProtocolViolation(f"cannot {doing} in step {self.step.value} (expected {step.value})")

    def advertise(self) -> AdvertiseKeys:
        """Step 0: the agent's public keys."""
        self._expect(ClientStep.NEW, "advertise keys")
        self.step = ClientStep.ADVERTISED
        return AdvertiseKeys(self.agent_id, self._c.public, self._s.public)

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Step 1: shares of the masking key and of the self-mask seed for every agent of the
        roster, each sealed to it. Raises ProtocolViolation for a roster that lacks this agent's
        keys, repeats an agent, or whose threshold is not the spec's."""
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
        mine = AdvertiseKeys(self.agent_id, self._c.public, self._s.public)
        if mine not in roster.entries:
            raise ProtocolViolation("the roster does not hold this agent's keys")
        if len(set(ids)) != len(ids) or len({e.s_pk for e in roster.entries}) != len(ids):
            raise ProtocolViolation("the roster lists an agent or a key twice")
        expected = self.spec.threshold(roster.participants)
        if roster.threshold != expected or not expected <= len(ids) <= roster.participants:
            raise ProtocolViolation(
                f"the roster's threshold {roster.threshold} of {len(ids)} agents does not follow the "
                f"round's settings (threshold {expected} of {roster.participants} participants)"
            )

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

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 4, once: this agent's shares of the seeds of ``request.seed_of`` and of the
        masking keys of ``request.key_of``. Raises ProtocolViolation for a request that names an
        agent in both (that would unmask its input), leaves out or adds agents (together they
        must be exactly the agents that shared keys), or has fewer survivors than the threshold."""
        self._expect(ClientStep.READY, "unmask")
        roster = self._roster
        assert roster is not None
        both = set(request.seed_of) & set(request.key_of)
        if both:
            raise ProtocolViolation(
                f"refused: the request asks for both secrets of agent {sorted(both)[0]!r}"
            )
        if set(request.seed_of) | set(request.key_of) != set(self._senders) or len(request.seed_of) + len(
            request.key_of
        ) != len(self._senders):
            raise ProtocolViolation("the unmask request must name each agent that shared keys exactly once")
        if self.agent_id not in request.seed_of or len(request.seed_of) < roster.threshold:
            raise ProtocolViolation(
                "the unmask request must list this agent and at least the threshold of survivors"
            )
        self.step = ClientStep.UNMASKED
        return UnmaskResponse(
            self.agent_id,
            seeds=tuple(RevealedShare(v, self._held[v][1]) for v in request.seed_of),
            keys=tuple(RevealedShare(v, self._held[v][0]) for v in request.key_of),
        )
