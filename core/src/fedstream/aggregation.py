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
from pathlib import Path

import numpy as np

from fedstream.sums import FileSums, MemorySums, Sums
from fedstream.tensors import DType, Layout, TensorSpec

# Bytes read and folded at a time. Small enough that the piece and its scaled copy stay in
# the CPU's cache between the multiply and the add: 256 KiB folds ~40% faster than 4 MiB here
# (bench/strategies.py).
FOLD_PIECE_BYTES = 256 << 10
# Sums larger than this are kept in a file, mapped a window at a time (``make_accumulator``).
DEFAULT_ACCUMULATOR_MEMORY_BUDGET_BYTES = 4 << 30


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

    def __init__(self, layout: Layout, sums: Sums | None = None) -> None:
        self.layout = layout
        self.total_weight = 0.0
        self.count = 0
        self._averaged = False
        # In memory unless given (``make_accumulator`` puts large ones in a file).
        self._sums: Sums = sums if sums is not None else MemorySums(self.sums_layout())
        self._acc_specs = {t.name: t for t in self._sums.layout.tensors}

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
        return sums_layout_of(self.layout)

    def sums(self) -> list[np.ndarray]:
        """The running state (half the weighted mean of floating tensors, the weighted sum of
        the others), one flat array per tensor in the order of ``sums_layout``: what ``merge``
        takes. Views, valid until the accumulator is averaged."""
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        return [self._sums.whole(t) for t in self._sums.layout.tensors]

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
        the others, one window of the sums at a time, read in pieces of FOLD_PIECE_BYTES."""
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        buffers = _Buffers()
        for t in self.layout.tensors:
            acc_spec, src = self._acc_specs[t.name], source.spec(t.name)
            factor = share if t.dt.is_float else weight
            if src.dtype == "int8" and t.dt.is_float:
                s = source.spec(t.name + ":scale")
                raw_scale = memoryview(bytearray(4))
                read_into(s.offset, raw_scale)
                factor *= float(np.frombuffer(raw_scale, dtype="<f4")[0])
            k = keep if t.dt.is_float and keep != 1 else None
            per_window = self._sums.window_elements(acc_spec)
            for first in range(0, t.numel, per_window):
                count = min(per_window, t.numel - first)
                with self._sums.window(acc_spec, first, count) as acc:
                    _fold_window(read_into, src, first, acc, factor, k, buffers)

    def means(self) -> Iterator[tuple[TensorSpec, int, np.ndarray]]:
        """Each tensor's weighted mean (flat, in the accumulator's float dtype), in layout order,
        as (tensor, first element, values) pieces: a whole tensor at a time in memory, one
        window at a time for sums in a file (a piece is valid until the next is taken).
        Finite for finite inputs.

        Scales the state in place, so it consumes the accumulator: nothing may be folded
        into it afterwards, and it can be averaged once.
        """
        if self.count == 0:
            raise ValueError("no update was folded")
        if self._averaged:
            raise ValueError("the accumulator was averaged already")
        self._averaged = True
        for t in self.layout.tensors:
            acc_spec = self._acc_specs[t.name]
            per_window = self._sums.window_elements(acc_spec)
            for first in range(0, max(t.numel, 1), per_window):
                with self._sums.window(acc_spec, first, min(per_window, t.numel - first)) as acc:
                    if t.dt.is_float:
                        # Twice a convex combination of halves: at most one rounding past the largest.
                        big = np.finfo(acc.dtype).max
                        with np.errstate(over="ignore"):
                            np.multiply(acc, acc.dtype.type(2), out=acc)
                        np.clip(acc, -big, big, out=acc)
                    else:
                        np.divide(acc, acc.dtype.type(self.total_weight), out=acc)
                    yield t, first, acc

    def average(self) -> Iterator[tuple[str, np.ndarray]]:
        """Each tensor's weighted mean in its own storage dtype, whole (see ``means``): for
        tests and small models."""
        current: TensorSpec | None = None
        pieces: list[np.ndarray] = []
        for t, _, mean in self.means():
            if current is not None and t is not current:
                yield current.name, np.concatenate(pieces)
                pieces = []
            current = t
            pieces.append(from_accumulator(t.dt, mean).copy())
        if current is not None:
            yield current.name, np.concatenate(pieces)

    @property
    def nbytes(self) -> int:
        return self._sums.layout.total_bytes


class _Buffers:
    """A fold's piece buffer and scratch arrays, allocated once per fold and reused."""

    def __init__(self) -> None:
        self.piece = bytearray(FOLD_PIECE_BYTES)
        self.scratch: dict[np.dtype, np.ndarray] = {}

    def get(self, item: int, dtype: np.dtype) -> tuple[int, bytearray, np.ndarray]:
        """(piece size in bytes, piece buffer, scratch of at least as many ``dtype`` elements)."""
        step = max(item, FOLD_PIECE_BYTES - FOLD_PIECE_BYTES % item)
        if step > len(self.piece):
            self.piece = bytearray(step)
        tmp = self.scratch.get(dtype)
        if tmp is None or tmp.size < step // item:
            tmp = self.scratch[dtype] = np.empty(max(step // item, FOLD_PIECE_BYTES // 2), dtype)
        return step, self.piece, tmp


def _fold_window(
    read_into: Callable[[int, memoryview], None], src: TensorSpec, first: int, acc: np.ndarray,
    factor: float, keep: float | None, buffers: _Buffers,
) -> None:
    """Folds elements ``[first, first + acc.size)`` of the update's tensor ``src`` into ``acc``."""
    item = src.dt.itemsize
    step, piece, tmp = buffers.get(item, acc.dtype)
    w = acc.dtype.type(factor)
    k = acc.dtype.type(keep) if keep is not None else None
    begin, end = first * item, (first + acc.size) * item
    for start in range(begin, end, step):
        n = min(step, end - start)
        view = memoryview(piece)[:n]
        read_into(src.offset + start, view)
        raw = np.frombuffer(view, dtype=src.dt.storage)
        lo = (start - begin) // item
        part = acc[lo : lo + raw.size]
        out = tmp[: raw.size]
        if src.dt.name == "bfloat16":
            np.multiply(bf16_to_f32(raw), w, out=out)
        else:
            np.multiply(raw, w, out=out, casting="unsafe")
        if k is not None:
            np.multiply(part, k, out=part)
        np.add(part, out, out=part)


def make_accumulator(layout: Layout, memory_budget_bytes: int, directory: Path) -> WeightedAccumulator:
    """An accumulator over ``layout``: in memory when its sums fit ``memory_budget_bytes``,
    otherwise in a file of ``directory`` mapped a window at a time (a sixteenth of the budget,
    within FileSums' bounds), so that folding and averaging hold about one window.
    Raises ResourceExhausted when the directory has no room for the file."""
    sums_layout = sums_layout_of(layout)
    if sums_layout.total_bytes <= memory_budget_bytes:
        return WeightedAccumulator(layout)
    return WeightedAccumulator(layout, FileSums(sums_layout, directory, memory_budget_bytes // 16))


def sums_layout_of(layout: Layout) -> Layout:
    """The layout of an accumulator's running state: each tensor in its accumulator dtype."""
    return Layout.build((t.name, accumulator_dtype(t.dt).name, t.shape) for t in layout.tensors)
