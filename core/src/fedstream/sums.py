"""Where an accumulator's running sums live: arrays in memory, or a file memory-mapped one
window at a time when they would not fit the process's memory budget.

A window is mapped, folded into and unmapped again, so what the process holds of a file-backed
accumulator at any time is one window's pages, whatever the model's size; the rest is in the
file (the kernel's page cache, which it may write back and reclaim), never the process's own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from fedstream.errors import ResourceExhausted
from fedstream.tensors import Layout, TensorSpec

# The largest window of a file-backed accumulator mapped at once.
MAX_WINDOW_BYTES = 64 << 20
# The smallest: below it, mapping costs more than folding.
MIN_WINDOW_BYTES = 1 << 20


class Sums(Protocol):
    """The running sums of an accumulator, one flat array per tensor of ``layout`` (each in
    its accumulator dtype: ``layout`` is the sums' layout)."""

    layout: Layout

    def window_elements(self, spec: TensorSpec) -> int:
        """How many elements of ``spec`` one ``window`` may hold."""
        ...

    def window(self, spec: TensorSpec, first: int, count: int) -> AbstractContextManager[np.ndarray]:
        """A writable array of elements ``[first, first + count)`` of ``spec``, valid inside the
        ``with`` block."""
        ...

    def whole(self, spec: TensorSpec) -> np.ndarray:
        """All of ``spec``'s elements (read-only use: a leaf sending its sums)."""
        ...


class MemorySums:
    """Sums held as arrays in memory, every page touched when made (memory is taken when the
    round opens, not during uploads)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._arrays = {t.name: np.zeros(t.numel, dtype=t.dt.storage) for t in layout.tensors}
        for a in self._arrays.values():
            a.fill(0)

    def window_elements(self, spec: TensorSpec) -> int:
        return max(1, spec.numel)

    @contextmanager
    def window(self, spec: TensorSpec, first: int, count: int) -> Iterator[np.ndarray]:
        yield self._arrays[spec.name][first : first + count]

    def whole(self, spec: TensorSpec) -> np.ndarray:
        return self._arrays[spec.name]


class FileSums:
    """Sums in a file of ``directory`` (unlinked from the start: it goes with the process or
    with this object), laid out as ``layout``, mapped ``window_bytes`` at a time. The file's
    space is allocated up front, so a full disk is known when the round opens.

    Raises ResourceExhausted when the directory has no room for the file.
    """

    def __init__(self, layout: Layout, directory: Path, window_bytes: int) -> None:
        self.layout = layout
        self.window_bytes = max(MIN_WINDOW_BYTES, min(MAX_WINDOW_BYTES, window_bytes))
        directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory, prefix="accumulator-")  # noqa: SIM115 (held for the sums' life)
        if layout.total_bytes:
            try:
                os.posix_fallocate(self._file.fileno(), 0, layout.total_bytes)
            except OSError as e:
                self._file.close()
                raise ResourceExhausted(
                    f"no room in {directory} for an accumulator of {layout.total_bytes} bytes"
                ) from e

    def window_elements(self, spec: TensorSpec) -> int:
        return max(1, self.window_bytes // spec.dt.itemsize)

    @contextmanager
    def window(self, spec: TensorSpec, first: int, count: int) -> Iterator[np.ndarray]:
        if count == 0:
            yield np.empty(0, dtype=spec.dt.storage)
            return
        mapped = np.memmap(
            self._file, dtype=spec.dt.storage, mode="r+", offset=spec.offset + first * spec.dt.itemsize, shape=(count,)
        )
        try:
            yield mapped
        finally:
            # Dropping the map unmaps it: its pages leave the process (dirty ones are written
            # back by the kernel, from its page cache).
            del mapped

    def whole(self, spec: TensorSpec) -> np.ndarray:
        if spec.numel == 0:
            return np.empty(0, dtype=spec.dt.storage)
        return np.memmap(self._file, dtype=spec.dt.storage, mode="r", offset=spec.offset, shape=(spec.numel,))

    def close(self) -> None:
        self._file.close()
