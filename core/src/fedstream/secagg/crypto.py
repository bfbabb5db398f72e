"""Key agreement, key derivation and authenticated encryption for secure aggregation: thin
wrappers over ``cryptography`` (X25519, HKDF-SHA256, AES-256-GCM), nothing home-made."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedstream.errors import InvalidArgument
from fedstream.secagg import KEY_BYTES

NONCE_BYTES = 12
TAG_BYTES = 16
_LABEL = b"fedstream-secagg-v1"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``secret`` is the raw 32-byte private key (what Shamir shares)."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls(secret=key.private_bytes_raw(), public=key.public_key().public_bytes_raw())


def public_of(secret: bytes) -> bytes:
    """The X25519 public key of a raw private key; raises InvalidArgument if it is not 32 bytes."""
    check_key("private key", secret)
    return (
        X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def check_key(name: str, key: bytes) -> bytes:
    """Returns ``key``; raises InvalidArgument naming ``name`` unless it is 32 bytes."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidArgument(
            f"{name} must be {KEY_BYTES} bytes, got {len(key) if isinstance(key, bytes) else key!r}"
        )
    return key


def context(run_id: str, round_id: str, *parts: str) -> bytes:
    """Bytes binding a derivation or a ciphertext to one run, round and parties (length-prefixed,
    so that no two different tuples give the same bytes)."""
    out = bytearray(_LABEL)
    for part in (run_id, round_id, *parts):
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def agree(secret: bytes, peer_public: bytes, info: bytes) -> bytes:
    """HKDF-SHA256(X25519(secret, peer_public)) into 32 bytes under ``info``; symmetric in the two
    parties. Raises InvalidArgument for a malformed or degenerate (all-zero shared) peer key."""
    check_key("public key", peer_public)
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError:
        raise InvalidArgument("public key is not a usable X25519 key") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM under ``key`` with a random nonce: nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes | None:
    """The plaintext of ``seal``'s output, or None when it was not sealed under this key and
    associated data (tampered, misaddressed or replayed from another round)."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        return None
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        return None
