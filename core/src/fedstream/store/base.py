"""What every model store shares: version ids, the version record, writers and readers.

A version is immutable once committed and named ``<run_id>/<round:06d>``. Writers take the
model's bytes in layout order as they arrive; readers hand out byte ranges. Neither ever holds
a whole model in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from fedstream.errors import BadOffset, CorruptModel, FedstreamError, InvalidArgument, NonFiniteResult
from fedstream.ids import EVALUATION_NAME, check_evaluation_name, check_run_id, parse_version
from fedstream.tensors import (
    DEFAULT_CHUNK_BYTES,
    Chunk,
    Layout,
    TensorSpec,
    check_chunk_bytes,
    crc32c,
    iter_range_chunks,
)

__all__ = ["EVALUATION_NAME", "check_evaluation_name", "check_run_id", "parse_version"]

# The methods whose latency and failures are measured (fedstream.metrics.instrument).
STORE_METHODS = (
    "writer", "open", "info", "latest", "versions", "update_writer", "open_update", "delete_updates",
    "state_writer", "open_state", "put_evaluation", "evaluations", "delete", "pin", "unpin", "pinned",
    "put_lineage", "lineage",
)


def agent_key(agent_id: str) -> str:
    """An agent id as a file or object name: any id, nothing that could climb a path."""
    return base64.urlsafe_b64encode(agent_id.encode()).decode().rstrip("=") or "_"


def version_id(run_id: str, round_: int) -> str:
    return f"{check_run_id(run_id)}/{round_:06d}"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    layout: Layout
    metadata: dict[str, str] = field(default_factory=dict)
    # Hex SHA-256 of the data section (the flat layout), for anyone checking a whole file.
    sha256: str = ""
    created_unix: float = 0.0
    # CRC-32C of each block of block_bytes of the data section, recorded when the version was
    # written: every read checks the blocks it returns, before handing them on.
    block_bytes: int = 0
    block_crcs: tuple[int, ...] = ()


def _skip_to(chunks: Iterator[Chunk], start: int) -> Iterator[Chunk]:
    """The contiguous chunk stream from byte ``start`` on: the chunk holding it is cut there."""
    for chunk in chunks:
        end = chunk.offset + len(chunk.data)
        if end <= start:
            continue
        if chunk.offset < start:
            data = memoryview(chunk.data)[start - chunk.offset:]
            chunk = Chunk(start, data, crc32c(data))
        yield chunk


def rechunk(chunks: Iterator[Chunk], chunk_bytes: int, offset: int = 0) -> Iterator[Chunk]:
    """Cuts a contiguous chunk stream, starting at byte ``offset``, anew into chunks of
    ``chunk_bytes``."""
    check_chunk_bytes(chunk_bytes)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk.data
        while len(pending) >= chunk_bytes:
            data = bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
            yield Chunk(offset, data, crc32c(data))
            offset += chunk_bytes
    if pending:
        data = bytes(pending)
        yield Chunk(offset, data, crc32c(data))


def manifest_bytes(info: ModelVersion) -> bytes:
    """The JSON manifest stored beside a version's safetensors object."""
    return json.dumps({
        "version": info.version,
        "sha256": info.sha256,
        "created_unix": info.created_unix,
        "block_bytes": info.block_bytes,
        "block_crc32c": list(info.block_crcs),
    }).encode()


def version_from_manifest(version: str, layout: Layout, metadata: dict[str, str], raw: bytes) -> ModelVersion:
    """Raises CorruptModel when the manifest does not parse."""
    try:
        manifest = json.loads(raw)
        return ModelVersion(
            version, layout, metadata, str(manifest["sha256"]), float(manifest["created_unix"]),
            int(manifest.get("block_bytes", 0)), tuple(int(c) for c in manifest.get("block_crc32c", ())),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise CorruptModel(f"model {version} is corrupt: unreadable manifest") from None


# Elements checked for finiteness at a time: the check's temporaries stay small and are reused
# from the heap, instead of a model-sized one touched afresh for every tensor.
_FINITE_PIECE = 1 << 18


def _non_finite(spec: TensorSpec, data: memoryview) -> int:
    """The index of the first NaN or infinite value of whole elements of ``spec``, or -1."""
    raw = np.frombuffer(data, dtype=spec.dt.storage)
    bfloat16 = spec.dt.name == "bfloat16"
    for lo in range(0, raw.size, _FINITE_PIECE):
        piece = raw[lo : lo + _FINITE_PIECE]
        # bfloat16 travels as its bits: all exponent bits set is NaN or an infinity.
        bad = (piece & 0x7F80) == 0x7F80 if bfloat16 else ~np.isfinite(piece)
        if bad.any():
            return lo + int(np.flatnonzero(bad)[0])
    return -1


class FiniteValues:
    """Checks the floating values of a layout's bytes as they are written in order: raises
    NonFiniteResult naming the first tensor holding NaN or an infinity, before the bytes of
    that write are stored."""

    def __init__(self, version: str, layout: Layout) -> None:
        self.version = version
        self.tensors = layout.tensors
        self._i = 0
        self._pos = 0
        self._carry = bytearray()  # the start of an element cut by the end of a write

    def feed(self, data: memoryview) -> None:
        while data and self._i < len(self.tensors):
            t = self.tensors[self._i]
            take = min(len(data), t.end - self._pos)
            if t.dt.is_float:
                self._check(t, data[:take])
            self._pos += take
            data = data[take:]
            if self._pos == t.end:
                self._i += 1

    def _check(self, t: TensorSpec, piece: memoryview) -> None:
        item = t.dt.itemsize
        first = (self._pos - t.offset) // item
        if self._carry:
            need = item - len(self._carry)
            self._carry += piece[:need]
            piece = piece[need:]
            if len(self._carry) < item:
                return
            self._raise_at(t, first, _non_finite(t, memoryview(self._carry)))
            self._carry.clear()
            first += 1
        whole = len(piece) - len(piece) % item
        self._raise_at(t, first, _non_finite(t, piece[:whole]))
        self._carry += piece[whole:]

    def _raise_at(self, t: TensorSpec, first: int, hit: int) -> None:
        if hit >= 0:
            raise NonFiniteResult(
                f"model {self.version}: tensor {t.name!r} would hold NaN or infinite values (first at "
                f"element {first + hit}); it was not committed"
            )


def read_back(info: ModelVersion, open_stored: Callable[[], ModelReader]) -> None:
    """Reads a just-stored version back whole (header, metadata, every block against its
    checksum); raises CorruptModel saying what differs when it does not read back as written."""
    try:
        with open_stored() as reader:
            stored = reader.info
            if stored.layout != info.layout:
                problem = stored.layout.mismatch(info.layout) or "its layout differs"
                raise CorruptModel(f"model {info.version} does not read back as written: {problem}")
            if stored.metadata != info.metadata:
                raise CorruptModel(f"model {info.version} does not read back as written: its metadata differs")
            for _ in reader.iter_chunks(info.block_bytes or DEFAULT_CHUNK_BYTES):
                pass
    except CorruptModel:
        raise
    except FedstreamError as e:
        raise CorruptModel(f"model {info.version} does not read back as written: {e.public}") from None


# Writes at least this large are hashed in a thread beside the rest of the write.
PARALLEL_HASH_BYTES = 1 << 20
_HASHER: ThreadPoolExecutor | None = None
_HASHER_LOCK = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None:
            _HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
        return _HASHER


class ModelWriter(ABC):
    """Takes a version's bytes in order; ``commit`` makes it visible, ``abort`` drops it."""

    def __init__(
        self, version: str, layout: Layout, block_bytes: int = DEFAULT_CHUNK_BYTES, *, check_finite: bool = False
    ) -> None:
        """``check_finite``: refuse NaN and infinite floating values (NonFiniteResult)."""
        self.version = version
        self.layout = layout
        self.written = 0
        self.block_bytes = block_bytes
        self._hash = hashlib.sha256()
        self._crcs: list[int] = []
        self._crc = 0
        self._fill = 0
        self._finite = FiniteValues(version, layout) if check_finite else None

    def write(self, data: bytes | memoryview) -> None:
        data = memoryview(data)
        data = data.cast("B") if data.nbytes else memoryview(b"")
        if self.written + len(data) > self.layout.total_bytes:
            raise InvalidArgument(
                f"model {self.version}: write past the layout's {self.layout.total_bytes} bytes"
            )
        # SHA-256 (which releases the GIL) runs beside the checks and the write; it is done
        # before this returns, so the caller may reuse its buffer and the digest stays in order.
        hashing = _hasher().submit(self._hash.update, data) if len(data) >= PARALLEL_HASH_BYTES else None
        try:
            if hashing is None:
                self._hash.update(data)
            self._checked_write(data)
        finally:
            if hashing is not None:
                hashing.result()

    def _checked_write(self, data: memoryview) -> None:
        if self._finite is not None:
            self._finite.feed(data)
        rest = data
        while rest:
            take = min(self.block_bytes - self._fill, len(rest))
            self._crc = crc32c(rest[:take], self._crc)
            self._fill += take
            rest = rest[take:]
            if self._fill == self.block_bytes:
                self._crcs.append(self._crc)
                self._crc, self._fill = 0, 0
        self._write(data)
        self.written += len(data)

    def commit(self, *, set_latest: bool = True) -> ModelVersion:
        if self.written != self.layout.total_bytes:
            raise InvalidArgument(
                f"model {self.version}: {self.written} of {self.layout.total_bytes} bytes written"
            )
        if self._fill:
            self._crcs.append(self._crc)
            self._crc, self._fill = 0, 0
        return self._commit(self._hash.hexdigest(), tuple(self._crcs), set_latest)

    @abstractmethod
    def _write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def _commit(self, sha256: str, block_crcs: tuple[int, ...], set_latest: bool) -> ModelVersion: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> ModelWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self.abort()


class ModelReader(ABC):
    """Byte ranges of one stored version."""

    def __init__(self, info: ModelVersion) -> None:
        self.info = info

    @property
    def layout(self) -> Layout:
        return self.info.layout

    @abstractmethod
    def read_at(self, offset: int, size: int) -> bytes:
        """Reads [offset, offset + size) of the data section."""

    def iter_chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES, start: int = 0) -> Iterator[Chunk]:
        """All chunks in order from byte ``start`` (0: the whole model), each block checked
        against the CRC recorded at write time before any of its bytes are yielded; raises
        CorruptModel at the first bad block.

        At the recorded block size (and a block-aligned start) the recorded CRCs are the
        chunks' checksums; otherwise the verified blocks are cut anew, from ``start``. Versions
        without a block table (written elsewhere) are read from byte 0 and checked against
        their SHA-256 after the last chunk instead.
        """
        info = self.info
        total = self.layout.total_bytes
        if not 0 <= start <= total:
            raise BadOffset(f"offset {start} is outside model {info.version}'s {total} bytes")
        if not info.block_bytes:
            yield from (c for c in self._iter_hashed(chunk_bytes) if c.offset >= start)
            return
        self.block_count()
        blocks = self._iter_verified_blocks(start // info.block_bytes)
        if chunk_bytes == info.block_bytes and start % info.block_bytes == 0:
            yield from blocks
        else:
            yield from rechunk(_skip_to(blocks, start), chunk_bytes, start)

    def block_count(self) -> int:
        """How many blocks of ``info.block_bytes`` the version's data has (0 for a version
        without a block table); raises CorruptModel when its table does not cover them."""
        info = self.info
        if not info.block_bytes:
            return 0
        expected = -(-self.layout.total_bytes // info.block_bytes)
        if len(info.block_crcs) != expected:
            raise CorruptModel(
                f"model {info.version} is corrupt: {len(info.block_crcs)} block checksums for "
                f"{expected} blocks"
            )
        return expected

    def verified_block(self, i: int) -> Chunk:
        """Block ``i`` of a version with a block table, checked against the CRC recorded at
        write time (CorruptModel otherwise)."""
        info = self.info
        offset = i * info.block_bytes
        data = self.read_at(offset, min(info.block_bytes, self.layout.total_bytes - offset))
        crc = crc32c(data)
        if crc != info.block_crcs[i]:
            raise CorruptModel(
                f"model {info.version} is corrupt: checksum mismatch in bytes {offset}..{offset + len(data)}"
            )
        return Chunk(offset, data, crc)

    def _iter_verified_blocks(self, first: int = 0) -> Iterator[Chunk]:
        for i in range(first, self.block_count()):
            yield self.verified_block(i)

    def _iter_hashed(self, chunk_bytes: int) -> Iterator[Chunk]:
        digest = hashlib.sha256()
        for chunk in iter_range_chunks(self.read_at, self.layout.total_bytes, chunk_bytes):
            digest.update(chunk.data)
            yield chunk
        if self.info.sha256 and digest.hexdigest() != self.info.sha256:
            raise CorruptModel(f"model {self.info.version} is corrupt: checksum mismatch")

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
