"""The messages of a secure aggregation round, typed and bounded: what an agent sends, what the
aggregator relays, and the checks each side runs on what it receives."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedstream.errors import InvalidArgument
from fedstream.secagg import KEY_BYTES
from fedstream.secagg.crypto import NONCE_BYTES, TAG_BYTES, check_key
from fedstream.secagg.shamir import ELEMENT_BYTES, PRIME
from fedstream.secagg.signing import check_certificate_bytes, check_signature_bytes

# One encrypted pair of shares (of the masking key and of the self-mask seed).
SHARE_PLAINTEXT_BYTES = 2 * ELEMENT_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES
MAX_AGENT_ID_CHARS = 256


def check_agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not 0 < len(agent_id) <= MAX_AGENT_ID_CHARS:
        raise InvalidArgument(f"an agent id must be 1 to {MAX_AGENT_ID_CHARS} characters")
    return agent_id


def unique(ids: Iterable[str], what: str) -> tuple[str, ...]:
    """The ids as a tuple; raises InvalidArgument naming ``what`` when one repeats."""
    out = tuple(ids)
    if len(set(out)) != len(out):
        raise InvalidArgument(f"{what} lists an agent twice")
    return out


@dataclass(frozen=True)
class AdvertiseKeys:
    """An agent's two public keys for the round: ``c_pk`` to encrypt shares to it, ``s_pk`` to
    agree pairwise masks with it; ``signature`` over them (``signing.advertise_payload``) by the
    key of ``certificate`` (DER), the agent's identity."""

    agent_id: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    certificate: bytes

    def check(self) -> AdvertiseKeys:
        """Returns itself; raises InvalidArgument naming the field out of bounds (the signature
        itself is checked by ``signing.Trust``)."""
        check_agent_id(self.agent_id)
        check_key("c_pk", self.c_pk)
        check_key("s_pk", self.s_pk)
        if self.c_pk == self.s_pk:
            raise InvalidArgument("c_pk and s_pk must be different keys")
        check_signature_bytes("signature", self.signature)
        check_certificate_bytes("certificate", self.certificate)
        return self


@dataclass(frozen=True)
class Roster:
    """The agents that advertised keys (U1), in share-point order (the i-th holds the shares at
    x = i + 1), with the round's participant count and threshold."""

    entries: tuple[AdvertiseKeys, ...]
    participants: int
    threshold: int

    def ids(self) -> tuple[str, ...]:
        return tuple(e.agent_id for e in self.entries)

    def point(self, agent_id: str) -> int:
        """The share point (x) of an agent of the roster."""
        return self.ids().index(agent_id) + 1


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of ``sender``'s secrets for ``recipient``, sealed so that only it can read them."""

    sender: str
    recipient: str
    ciphertext: bytes

    def check(self) -> EncryptedShare:
        check_agent_id(self.sender)
        check_agent_id(self.recipient)
        if len(self.ciphertext) != CIPHERTEXT_BYTES:
            raise InvalidArgument(
                f"an encrypted share must be {CIPHERTEXT_BYTES} bytes, got {len(self.ciphertext)}"
            )
        return self


@dataclass(frozen=True)
class ShareKeys:
    """An agent's encrypted shares for every other agent of the roster, with the SHA-256 of its
    self-mask seed (the commitment its reconstruction is checked against)."""

    agent_id: str
    seed_commitment: bytes
    shares: tuple[EncryptedShare, ...]

    def check(self) -> ShareKeys:
        check_agent_id(self.agent_id)
        if len(self.seed_commitment) != KEY_BYTES:
            raise InvalidArgument(f"seed_commitment must be {KEY_BYTES} bytes (SHA-256)")
        for share in self.shares:
            share.check()
            if share.sender != self.agent_id:
                raise InvalidArgument("every share must be sent by the agent sending them")
        unique((s.recipient for s in self.shares), "shares")
        return self


@dataclass(frozen=True)
class SharesDelivery:
    """What the aggregator relays to one agent: the agents that shared keys (U2) and their
    shares addressed to it."""

    senders: tuple[str, ...]
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class SurvivorSignature:
    """A survivor's signature over the list of survivors (``signing.survivors_payload``): the
    consistency check."""

    agent_id: str
    signature: bytes

    def check(self) -> SurvivorSignature:
        check_agent_id(self.agent_id)
        check_signature_bytes("a survivors' signature", self.signature)
        return self


@dataclass(frozen=True)
class UnmaskRequest:
    """Which secret of which agent the survivors reveal: the self-mask seed of every agent that
    uploaded (``seed_of``, U3), the masking key of every agent that shared keys but did not
    (``key_of``). Never both for one agent. ``signatures``: the survivors that signed
    ``seed_of`` (U4), at least the threshold of them."""

    seed_of: tuple[str, ...]
    key_of: tuple[str, ...]
    signatures: tuple[SurvivorSignature, ...] = ()


@dataclass(frozen=True)
class RevealedShare:
    """A survivor's share (its point's value) of one agent's secret."""

    owner: str
    value: int

    def check(self) -> RevealedShare:
        check_agent_id(self.owner)
        if not 0 <= self.value < PRIME:
            raise InvalidArgument("a revealed share must be a field element")
        return self


@dataclass(frozen=True)
class UnmaskResponse:
    """A survivor's answer to the unmask request."""

    agent_id: str
    seeds: tuple[RevealedShare, ...]
    keys: tuple[RevealedShare, ...]

    def check(self) -> UnmaskResponse:
        check_agent_id(self.agent_id)
        for share in (*self.seeds, *self.keys):
            share.check()
        unique((s.owner for s in self.seeds), "seeds")
        unique((s.owner for s in self.keys), "keys")
        return self
