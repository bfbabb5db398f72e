"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1): any ``t`` shares
give the secret back, ``t - 1`` say nothing about it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from fedstream.errors import InvalidArgument
from fedstream.secagg import KEY_BYTES

PRIME = 2**521 - 1
# A field element on the wire: big-endian, fixed length.
ELEMENT_BYTES = (PRIME.bit_length() + 7) // 8


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, in [1, PRIME)): the values at each x
    of a random polynomial of degree ``threshold - 1`` whose constant term is the secret."""
    if len(secret) != KEY_BYTES:
        raise InvalidArgument(f"a shared secret must be {KEY_BYTES} bytes")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise InvalidArgument("shares need distinct nonzero points, at least threshold of them")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """The coefficients that take the values at ``xs`` to the polynomial's value at 0."""
    coefficients = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        coefficients.append(num * pow(den, -1, PRIME) % PRIME)
    return coefficients


def combine(ys: Sequence[int], coefficients: Sequence[int]) -> bytes | None:
    """The secret from the values ``ys`` at the points ``coefficients`` came from, or None when
    the result is not a 32-byte secret (shares of different polynomials)."""
    value = sum(y * c for y, c in zip(ys, coefficients, strict=True)) % PRIME
    if value >= 1 << (8 * KEY_BYTES):
        return None
    return value.to_bytes(KEY_BYTES, "big")


def reconstruct(shares: dict[int, int]) -> bytes | None:
    """The secret from shares {x: y} (as many as the threshold, or more: all lie on one
    polynomial when honest), or None when they cannot be one."""
    xs = sorted(shares)
    return combine([shares[x] for x in xs], lagrange_at_zero(xs))


def to_bytes(y: int) -> bytes:
    return y.to_bytes(ELEMENT_BYTES, "big")


def from_bytes(raw: bytes) -> int:
    """A field element from its wire form; raises InvalidArgument for a wrong length or a
    value outside the field."""
    if len(raw) != ELEMENT_BYTES:
        raise InvalidArgument(f"a share must be {ELEMENT_BYTES} bytes, got {len(raw)}")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise InvalidArgument("a share must be below the field's prime")
    return y
