"""Differential privacy's arithmetic, without sockets: the L2 norm of an update's change, its
clip factor, clipping, and Gaussian noise (fedstream.privacy holds the settings).

An update's change is clipped as one vector: the L2 norm is taken over every floating tensor
that travels (integer and bool tensors such as BatchNorm's ``num_batches_tracked`` are not part
of it: the aggregator keeps the base's values for them under privacy).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedstream.aggregation import to_accumulator
from fedstream.tensors import Layout

# Bytes of a spooled update read at a time when measuring its norm.
NORM_PIECE_BYTES = 1 << 20


def sum_of_squares(values: np.ndarray) -> float:
    """The sum of the squares of ``values``, accumulated in float64 (a float32 dot product
    loses digits over millions of elements, and the clip bound must hold); infinite when it
    overflows (the caller refuses such a change, its clip factor being 0)."""
    wide = values.astype(np.float64, copy=False).ravel()
    with np.errstate(over="ignore"):
        return float(np.dot(wide, wide))


def change_norm(layout: Layout, read_into: Callable[[int, memoryview], None]) -> float:
    """The L2 norm of the floating tensors of an update laid out as ``layout``, read through
    ``read_into(offset, buffer)`` piece by piece (never whole). Infinite when a value is."""
    total = 0.0
    piece = bytearray(NORM_PIECE_BYTES)
    for t in layout.tensors:
        if not t.dt.is_float or t.nbytes == 0:
            continue
        item = t.dt.itemsize
        step = NORM_PIECE_BYTES - NORM_PIECE_BYTES % item
        for start in range(0, t.nbytes, step):
            n = min(step, t.nbytes - start)
            view = memoryview(piece)[:n]
            read_into(t.offset + start, view)
            total += sum_of_squares(to_accumulator(t.dt, np.frombuffer(view, dtype=t.dt.storage)))
    return math.sqrt(total)


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, clip_norm / norm): what a change of L2 norm ``norm`` is multiplied by so that its
    norm is at most ``clip_norm`` (1 for a zero change). Raises ValueError for a negative or
    NaN norm or a clip norm that is not a positive finite number."""
    if not 0 < clip_norm < math.inf:
        raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm!r}")
    if not norm >= 0:
        raise ValueError(f"a norm is a non-negative number, got {norm!r}")
    if norm <= clip_norm:
        return 1.0
    return clip_norm / norm


def is_float_tensor(value: Any) -> bool:
    """Whether a torch tensor or numpy array holds floating values."""
    if isinstance(value, np.ndarray):
        return bool(np.issubdtype(value.dtype, np.floating))
    return bool(value.is_floating_point())


def _squares(value: Any) -> float:
    if isinstance(value, np.ndarray):
        return sum_of_squares(value)
    return float(value.detach().double().pow(2).sum().item())


def tensors_norm(tensors: Mapping[str, Any]) -> float:
    """The L2 norm of the floating tensors (torch tensors or numpy arrays) of ``tensors``, as
    one vector, computed in float64."""
    return math.sqrt(sum(_squares(v) for v in tensors.values() if is_float_tensor(v)))


def clip_tensors(tensors: Mapping[str, Any], clip_norm: float) -> tuple[float, float]:
    """Scales every floating tensor of ``tensors`` (torch tensors or numpy arrays) in place so
    that their joint L2 norm is at most ``clip_norm``; other tensors are left as they are.
    Returns (the norm before clipping, the factor applied: 1 when within the bound)."""
    norm = tensors_norm(tensors)
    factor = clip_factor(norm, clip_norm)
    if factor < 1.0:
        for value in tensors.values():
            if is_float_tensor(value):
                value *= factor
    return norm, factor


def noise_generator() -> np.random.Generator:
    """A generator of Gaussian noise seeded from the operating system's randomness (128 bits,
    so neither a site nor the aggregator's operator can predict or replay it).

    Not a sampler hardened against floating-point attacks (Mironov, "On significance of the
    least significant bits for differential privacy", CCS 2012): numpy's Gaussian samples in
    float32/float64 have the gaps that attack exploits; the documentation says so."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))


def gaussian_noise(generator: np.random.Generator, size: int, std: float, dtype: Any = np.float32) -> np.ndarray:
    """``size`` independent samples of N(0, std^2) in ``dtype`` (float32 or float64). Raises
    ValueError for a negative or non-finite ``std``."""
    if not 0 <= std < math.inf:
        raise ValueError(f"the noise's standard deviation must be a non-negative finite number, got {std!r}")
    kind = np.dtype(dtype)
    if kind not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"noise is drawn in float32 or float64, not {kind}")
    samples = generator.standard_normal(size, dtype=kind)
    samples *= kind.type(std)
    return samples


def add_noise(generator: np.random.Generator, values: np.ndarray, std: float) -> None:
    """Adds N(0, std^2) to every element of the flat floating array ``values``, in place."""
    if std > 0:
        values += gaussian_noise(generator, values.size, std, values.dtype).reshape(values.shape)
