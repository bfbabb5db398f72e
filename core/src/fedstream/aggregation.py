"""Streaming weighted averaging over a flat layout: the arithmetic of FedAvg, without sockets.

Updates are folded tensor piece by tensor piece into a running accumulator, so memory is one
accumulator the size of the model (float32 for floating tensors, float64 for integer and bool
tensors) whatever the number of updates.

Finite inputs always give a finite mean. A floating tensor's accumulator holds half the running
weighted mean, not the weighted sum: each fold scales it by ``W / (W + w)`` and adds the update
times ``w / (2 (W + w))``, a convex combination of values at most half the dtype's largest, so
it cannot overflow however large the values, weights or number of updates; ``means`` doubles it
and clamps the last rounding into range. Integer and bool tensors keep exact float64 sums
(their values times any example count stay far inside float64's range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from fedstream.tensors import DType, Layout, TensorSpec

# Bytes read and folded at a time. Small enough that the piece and its scaled copy stay in
# the CPU's cache between the multiply and the add: 256 KiB folds ~40% faster than 4 MiB here
# (bench/strategies.py).
FOLD_PIECE_BYTES = 256 << 10


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Rounds float32 to bfloat16 bits, to nearest even, keeping NaN a NaN."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def accumulator_dtype(dt: DType) -> np.dtype:
    return np.dtype(np.float64) if dt.name == "float64" or not dt.is_float else np.dtype(np.float32)


def to_accumulator(dt: DType, raw: np.ndarray) -> np.ndarray:
    """Raw elements (storage dtype) as accumulator values."""
    if dt.name == "bfloat16":
        return bf16_to_f32(raw)
    return raw.astype(accumulator_dtype(dt), copy=False)


def from_accumulator(dt: DType, values: np.ndarray) -> np.ndarray:
    """Averaged values back to the tensor's storage dtype (integers rounded, bools by majority)."""
    if dt.name == "bfloat16":
        return f32_to_bf16(values)
    if dt.name == "bool":
        rounded: np.ndarray = values >= 0.5
        return rounded
    if not dt.is_float:
        info = np.iinfo(dt.storage)
        clipped: np.ndarray = np.clip(np.rint(values), info.min, info.max).astype(dt.storage)
        return clipped
    return values.astype(dt.storage, copy=False)


def weighted_average(updates: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Reference: sum(w_k * x_k) / sum(w_k) in float64, for tests of the streaming fold."""
    total = sum(w for _, w in updates)
    average = sum(x.astype(np.float64) * w for x, w in updates) / total
    assert isinstance(average, np.ndarray)  # at least one update, or the division raised
    return average


class WeightedAccumulator:
    """A running weighted mean of updates over ``layout`` (see the module docstring).

    ``fold`` adds one update, read through ``read_into(offset, buffer)`` (a spool file, a
    buffer), in pieces of at most FOLD_PIECE_BYTES. ``average`` yields each tensor's weighted mean in
    its own dtype, in layout order.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.total_weight = 0.0
        self.count = 0
        self._averaged = False
        self._sums = {t.name: np.empty(t.numel, dtype=accumulator_dtype(t.dt)) for t in layout.tensors}
        # Touch every page now: memory is taken when the round opens, not during uploads.
        for a in self._sums.values():
            a.fill(0)

    def fold(
        self,
        read_into: Callable[[int, memoryview], None],
        weight: float,
        source: Layout | None = None,
    ) -> None:
        """Adds one update of ``weight``, which ``read_into(offset, buffer)`` fills piece by
        piece. ``source`` is the update's own layout when it travelled compressed (narrower
        floats, or int8 with a ``<name>:scale`` per tensor); by default it is the accumulator's.
        Buffers are allocated once per call and reused for every piece. Raises ValueError for
        a weight that is not a positive finite number."""
        if not 0 < weight < math.inf:
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        total = self.total_weight + weight
        self._add(read_into, source or self.layout, self.total_weight / total, 0.5 * weight / total, weight)
        self.total_weight = total
        self.count += 1

    def sums_layout(self) -> Layout:
        """The layout of the running state: each tensor in its accumulator dtype."""
        return Layout.build((t.name, accumulator_dtype(t.dt).name, t.shape) for t in self.layout.tensors)

    def sums(self) -> list[np.ndarray]:
        """The running state (half the weighted mean of floating tensors, the weighted sum of
        the others), one flat array per tensor in the order of ``sums_layout``: what ``merge``
        takes. Views, valid until the accumulator is averaged."""
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        return [self._sums[t.name] for t in self.sums_layout().tensors]

    def merge(self, read_into: Callable[[int, memoryview], None], total_weight: float, count: int) -> None:
        """Adds another accumulator's state (its ``sums``, in ``sums_layout``, read through
        ``read_into``) that holds ``count`` updates of ``total_weight`` in all: what a root
        aggregator does with its leaves' partial sums."""
        if count < 0 or not 0 <= total_weight < math.inf or (count > 0) != (total_weight > 0):
            raise ValueError(f"bad partial: {count} updates of total weight {total_weight}")
        total = self.total_weight + total_weight
        if count:
            self._add(read_into, self.sums_layout(), self.total_weight / total, total_weight / total, 1.0)
        self.total_weight = total
        self.count += count

    def _add(
        self, read_into: Callable[[int, memoryview], None], source: Layout, keep: float, share: float, weight: float
    ) -> None:
        """acc = keep * acc + share * update for floating tensors, acc += weight * update for
        the others."""
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        piece = bytearray(FOLD_PIECE_BYTES)
        scratch: dict[np.dtype, np.ndarray] = {}
        for t in self.layout.tensors:
            src = source.spec(t.name)
            acc = self._sums[t.name]
            factor = share if t.dt.is_float else weight
            if src.dtype == "int8" and t.dt.is_float:
                s = source.spec(t.name + ":scale")
                raw_scale = memoryview(bytearray(4))
                read_into(s.offset, raw_scale)
                factor *= float(np.frombuffer(raw_scale, dtype="<f4")[0])
            item = src.dt.itemsize
            step = max(item, FOLD_PIECE_BYTES - FOLD_PIECE_BYTES % item)
            if step > len(piece):
                piece = bytearray(step)
            tmp = scratch.get(acc.dtype)
            if tmp is None or tmp.size < step // item:
                tmp = scratch[acc.dtype] = np.empty(max(step // item, FOLD_PIECE_BYTES // 2), acc.dtype)
            w = acc.dtype.type(factor)
            k = acc.dtype.type(keep) if t.dt.is_float and keep != 1 else None
            for start in range(0, src.nbytes, step):
                n = min(step, src.nbytes - start)
                view = memoryview(piece)[:n]
                read_into(src.offset + start, view)
                raw = np.frombuffer(view, dtype=src.dt.storage)
                lo = start // item
                part = acc[lo : lo + raw.size]
                out = tmp[: raw.size]
                if src.dt.name == "bfloat16":
                    np.multiply(bf16_to_f32(raw), w, out=out)
                else:
                    np.multiply(raw, w, out=out, casting="unsafe")
                if k is not None:
                    np.multiply(part, k, out=part)
                np.add(part, out, out=part)

    def means(self) -> Iterator[tuple[TensorSpec, np.ndarray]]:
        """Each tensor's weighted mean (flat, in the accumulator's float dtype), in layout order:
        finite for finite inputs.

        Scales the state in place, so it consumes the accumulator: nothing may be folded
        into it afterwards, and it can be averaged once.
        """
        if self.count == 0:
            raise ValueError("no update was folded")
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        self._averaged = True
        for t in self.layout.tensors:
            acc = self._sums[t.name]
            if t.dt.is_float:
                # Twice a convex combination of halves: at most one rounding past the largest.
                big = np.finfo(acc.dtype).max
                with np.errstate(over="ignore"):
                    np.multiply(acc, acc.dtype.type(2), out=acc)
                np.clip(acc, -big, big, out=acc)
            else:
                np.divide(acc, acc.dtype.type(self.total_weight), out=acc)
            yield t, acc

    def average(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each tensor's weighted mean in its own storage dtype (see ``means``)."""
        for t, mean in self.means():
            yield t.name, from_accumulator(t.dt, mean)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._sums.values())
