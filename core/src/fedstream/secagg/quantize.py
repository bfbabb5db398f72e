"""The fixed-point ring of secure aggregation: a weighted change, clipped coordinate by
coordinate, as two's complement integers with ``FRACTION_BITS`` fraction bits in Z_2^64."""

from __future__ import annotations

import numpy as np

from fedstream.errors import InvalidArgument, SecureAggregationFailed
from fedstream.secagg import FRACTION_BITS, RING_BITS
from fedstream.tensors import Layout

SCALE = float(1 << FRACTION_BITS)
# The largest weight one update may carry (an example count); the ring check bounds the sum.
MAX_WEIGHT = 1 << 31


def check_weight(weight: int) -> int:
    """Returns ``weight``; raises InvalidArgument unless it is an integer in [1, MAX_WEIGHT]."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise InvalidArgument(
            f"a secure aggregation weight must be an integer in [1, {MAX_WEIGHT}], got {weight!r}"
        )
    return weight


def quantize(change: np.ndarray, weight: int, clip_range: float) -> np.ndarray:
    """``round(clip(change, -clip_range, clip_range) * weight * 2^FRACTION_BITS)`` as uint64
    (two's complement), 1-D. Non-finite coordinates are refused (InvalidArgument)."""
    check_weight(weight)
    check_ring(weight, clip_range)
    values = np.asarray(change, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise InvalidArgument("a change to quantize has non-finite values")
    scaled = np.rint(np.clip(values, -clip_range, clip_range) * (weight * SCALE))
    return scaled.astype(np.int64).view(np.uint64)


def dequantize(ring_sum: np.ndarray) -> np.ndarray:
    """The real values a ring sum stands for (float64), read as two's complement."""
    return np.asarray(ring_sum, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def check_ring(total_weight: int, clip_range: float) -> None:
    """Raises SecureAggregationFailed when a sum of updates of these total weight and clip range
    could leave the signed range of the ring (it would wrap, and the sum would be wrong)."""
    if total_weight * clip_range * SCALE >= float(1 << (RING_BITS - 1)):
        raise SecureAggregationFailed(
            f"the ring would overflow: total weight {total_weight} times clip range {clip_range:g} "
            f"needs more than {RING_BITS - 1 - FRACTION_BITS} integer bits"
        )


def error_bound(total_weight: int, count: int) -> float:
    """The largest rounding error of a weighted mean of ``count`` quantized updates whose weights
    sum to ``total_weight``: each rounding is off by at most half a unit of the last place."""
    return count * 0.5 / SCALE / total_weight


def masked_layout(layout: Layout) -> Layout:
    """The layout a masked update travels in: for each floating tensor of ``layout`` an int64
    tensor (ring elements, two's complement) of the same name and shape; the others do not
    travel (they keep the base's values)."""
    return Layout.build((t.name, "int64", t.shape) for t in layout.tensors if t.dt.is_float)
