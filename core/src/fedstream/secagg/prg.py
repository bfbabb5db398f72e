"""The mask generator: AES-256-CTR keyed by a 32-byte seed, read as little-endian uint64 ring
elements. The counter is positioned at an element offset, so that any chunk's mask is produced
without the rest (chunk by chunk, bounded memory)."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedstream.errors import InvalidArgument
from fedstream.secagg.crypto import check_key

_ELEMENT_BYTES = 8
_BLOCK_BYTES = 16
_PER_BLOCK = _BLOCK_BYTES // _ELEMENT_BYTES


def mask(seed: bytes, offset: int, count: int) -> np.ndarray:
    """Elements ``offset .. offset + count`` of the stream of ``seed`` (uint64, 1-D): the same
    elements whatever chunks they are asked in."""
    check_key("mask seed", seed)
    if offset < 0 or count < 0:
        raise InvalidArgument("mask offset and count must not be negative")
    block, skip = divmod(offset, _PER_BLOCK)
    counter = (block % (1 << 128)).to_bytes(_BLOCK_BYTES, "big")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()
    start = skip * _ELEMENT_BYTES
    raw = encryptor.update(bytes(start + count * _ELEMENT_BYTES))[start:]
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)
