"""Verified random-access reads of stored objects (versions, kept updates, strategy state)."""

from __future__ import annotations

import numpy as np

from fedstream.aggregation import to_accumulator
from fedstream.errors import CorruptModel
from fedstream.store import ModelReader
from fedstream.tensors import TensorSpec, crc32c


class Blocks:
    """Random-access reads of a stored object, each block checked against the CRC recorded
    when it was written (raises CorruptModel on a mismatch); the last block read is cached."""

    def __init__(self, reader: ModelReader) -> None:
        self._reader = reader
        self._info = reader.info
        self._total = reader.layout.total_bytes
        if not self._info.block_bytes and self._total:
            raise CorruptModel(f"{self._info.version} has no block checksums to verify")
        self._cached: tuple[int, bytes] = (-1, b"")

    def _block(self, index: int) -> bytes:
        if self._cached[0] != index:
            size = self._info.block_bytes
            data = self._reader.read_at(index * size, min(size, self._total - index * size))
            if crc32c(data) != self._info.block_crcs[index]:
                raise CorruptModel(f"{self._info.version} is corrupt: checksum mismatch in block {index}")
            self._cached = (index, data)
        return self._cached[1]

    def read_into(self, offset: int, out: memoryview) -> None:
        size = self._info.block_bytes
        filled = 0
        while filled < len(out):
            index, within = divmod(offset + filled, size)
            block = self._block(index)
            take = min(len(block) - within, len(out) - filled)
            out[filled : filled + take] = block[within : within + take]
            filled += take

    def tensor(self, spec: TensorSpec, first: int = 0, count: int | None = None) -> np.ndarray:
        """One tensor's values in its accumulator dtype (flat): elements ``[first, first +
        count)``, all of them by default."""
        return to_accumulator(spec.dt, self._elements(spec, first, count))

    def float32(self, spec: TensorSpec, first: int = 0, count: int | None = None) -> np.ndarray:
        """One float32 tensor's values as stored (flat), elements as for ``tensor``."""
        return self._elements(spec, first, count).view(np.float32)

    def _elements(self, spec: TensorSpec, first: int, count: int | None) -> np.ndarray:
        item = spec.dt.itemsize
        n = spec.numel - first if count is None else count
        raw = bytearray(n * item)
        self.read_into(spec.offset + first * item, memoryview(raw))
        return np.frombuffer(raw, dtype=spec.dt.storage)
