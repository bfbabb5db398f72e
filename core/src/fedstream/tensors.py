"""Flat byte layouts of named tensors and their movement as checksummed chunks."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import crc32c as _crc32c
import numpy as np

from fedstream.errors import BadOffset, ChecksumMismatch, InvalidArgument, InvalidLayout, Truncated
from fedstream.v1 import tensor_pb2

DEFAULT_CHUNK_BYTES = 1 << 20
# gRPC's default receive limit is 4 MiB and is never raised: a chunk plus its envelope must fit.
MAX_CHUNK_BYTES = (4 << 20) - (64 << 10)
# The smallest chunk a client may ask for in a download unless the server allows less.
DEFAULT_MIN_DOWNLOAD_CHUNK_BYTES = 64 << 10
MAX_TENSORS = 100_000
MAX_NAME_LENGTH = 1024
_NAME_RE = re.compile(r"^[\x21-\x7e]+$")
# Keys the safetensors header keeps for itself: a tensor of that name could be written but
# never read back.
RESERVED_NAMES = frozenset({"__metadata__"})


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    safetensors: str
    proto: tensor_pb2.DType
    # Numpy dtype that holds the raw elements (bfloat16 has none, so it is kept as uint16 bits).
    storage: np.dtype
    is_float: bool


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", 4, "F32", tensor_pb2.DTYPE_FLOAT32, np.dtype("<f4"), True),
        DType("float16", 2, "F16", tensor_pb2.DTYPE_FLOAT16, np.dtype("<f2"), True),
        DType("bfloat16", 2, "BF16", tensor_pb2.DTYPE_BFLOAT16, np.dtype("<u2"), True),
        DType("float64", 8, "F64", tensor_pb2.DTYPE_FLOAT64, np.dtype("<f8"), True),
        DType("int64", 8, "I64", tensor_pb2.DTYPE_INT64, np.dtype("<i8"), False),
        DType("int32", 4, "I32", tensor_pb2.DTYPE_INT32, np.dtype("<i4"), False),
        DType("int16", 2, "I16", tensor_pb2.DTYPE_INT16, np.dtype("<i2"), False),
        DType("int8", 1, "I8", tensor_pb2.DTYPE_INT8, np.dtype("i1"), False),
        DType("uint8", 1, "U8", tensor_pb2.DTYPE_UINT8, np.dtype("u1"), False),
        DType("bool", 1, "BOOL", tensor_pb2.DTYPE_BOOL, np.dtype("?"), False),
    )
}
_BY_PROTO: dict[int, DType] = {d.proto: d for d in DTYPES.values()}
_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values()}


def dtype_from_safetensors(code: str) -> DType:
    try:
        return _BY_SAFETENSORS[code]
    except KeyError:
        raise InvalidLayout(f"unsupported safetensors dtype {code!r}") from None


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of any bytes-like object, continuing from ``value``."""
    return _crc32c.crc32c(data, value)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def dt(self) -> DType:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass(frozen=True)
class Layout:
    """The header of a flat byte sequence: which bytes belong to which tensor.

    Tensors are contiguous and in order from offset 0, without gaps, each aligned to its
    element size. ``Layout.build`` orders tensors by element size (largest first, otherwise
    as given), which makes every tensor aligned, as safetensors' own writer does.
    """

    tensors: tuple[TensorSpec, ...]

    @property
    def total_bytes(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def spec(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @staticmethod
    def build(items: Iterable[tuple[str, str, tuple[int, ...]]]) -> Layout:
        """Lays out (name, dtype, shape) items; raises InvalidLayout on a bad item."""
        entries = list(items)
        for name, dtype, shape in entries:
            if dtype not in DTYPES:
                raise InvalidLayout(f"tensor {name!r}: unsupported dtype {dtype!r}")
            if any(int(s) < 0 for s in shape):
                raise InvalidLayout(f"tensor {name!r}: negative dimension in shape {tuple(shape)}")
        order = sorted(range(len(entries)), key=lambda i: -DTYPES[entries[i][1]].itemsize)
        offset = 0
        specs = []
        for i in order:
            name, dtype, shape = entries[i]
            shape = tuple(int(s) for s in shape)
            nbytes = math.prod(shape) * DTYPES[dtype].itemsize
            specs.append(TensorSpec(name, dtype, shape, offset, nbytes))
            offset += nbytes
        layout = Layout(tuple(specs))
        layout.validate()
        return layout

    def validate(self) -> None:
        """Raises InvalidLayout naming the first problem found."""
        if len(self.tensors) > MAX_TENSORS:
            raise InvalidLayout(f"layout has {len(self.tensors)} tensors, more than {MAX_TENSORS}")
        seen: set[str] = set()
        expected = 0
        for t in self.tensors:
            if not t.name or len(t.name) > MAX_NAME_LENGTH or not _NAME_RE.match(t.name):
                raise InvalidLayout(f"invalid tensor name {t.name[:80]!r}")
            if t.name in RESERVED_NAMES:
                raise InvalidLayout(f"tensor name {t.name!r} is reserved by the safetensors format")
            if t.name in seen:
                raise InvalidLayout(f"tensor {t.name!r} appears twice")
            seen.add(t.name)
            if t.dtype not in DTYPES:
                raise InvalidLayout(f"tensor {t.name!r}: unsupported dtype {t.dtype!r}")
            if t.nbytes != t.numel * t.dt.itemsize:
                raise InvalidLayout(
                    f"tensor {t.name!r}: {t.nbytes} bytes do not fit shape {t.shape} of {t.dtype}"
                )
            if t.offset != expected:
                raise InvalidLayout(
                    f"tensor {t.name!r}: offset {t.offset}, expected {expected} (tensors must be "
                    "contiguous and in order)"
                )
            if t.offset % t.dt.itemsize:
                raise InvalidLayout(
                    f"tensor {t.name!r}: offset {t.offset} is not aligned to {t.dt.itemsize} bytes"
                )
            expected = t.end

    def mismatch(self, expected: Layout) -> str | None:
        """Describes how this layout differs from ``expected``; None when they are equal."""
        mine = {t.name: t for t in self.tensors}
        theirs = {t.name: t for t in expected.tensors}
        unknown = [n for n in mine if n not in theirs]
        if unknown:
            return f"unknown tensor names: {', '.join(repr(n) for n in unknown[:5])}"
        missing = [n for n in theirs if n not in mine]
        if missing:
            return f"missing tensors: {', '.join(repr(n) for n in missing[:5])}"
        for name, t in mine.items():
            e = theirs[name]
            if t.dtype != e.dtype:
                return f"tensor {name!r}: dtype {t.dtype}, expected {e.dtype}"
            if t.shape != e.shape:
                return f"tensor {name!r}: shape {list(t.shape)}, expected {list(e.shape)}"
        for name, t in mine.items():
            e = theirs[name]
            if t.offset != e.offset:
                return f"tensor {name!r}: offset {t.offset}, expected {e.offset}"
        return None

    def to_proto(self) -> tensor_pb2.Layout:
        return tensor_pb2.Layout(
            tensors=[
                tensor_pb2.TensorSpec(
                    name=t.name, dtype=t.dt.proto, shape=t.shape, offset=t.offset, nbytes=t.nbytes
                )
                for t in self.tensors
            ],
            total_bytes=self.total_bytes,
        )

    @staticmethod
    def from_proto(msg: tensor_pb2.Layout) -> Layout:
        """Parses and validates a layout received from a peer; raises InvalidLayout."""
        if len(msg.tensors) > MAX_TENSORS:
            raise InvalidLayout(f"layout has {len(msg.tensors)} tensors, more than {MAX_TENSORS}")
        specs = []
        for t in msg.tensors:
            dt = _BY_PROTO.get(t.dtype)
            if dt is None:
                raise InvalidLayout(f"tensor {t.name[:80]!r}: unknown dtype enum {t.dtype}")
            specs.append(TensorSpec(t.name, dt.name, tuple(t.shape), t.offset, t.nbytes))
        layout = Layout(tuple(specs))
        layout.validate()
        if msg.total_bytes != layout.total_bytes:
            raise InvalidLayout(
                f"total_bytes {msg.total_bytes} does not match the tensors' {layout.total_bytes}"
            )
        return layout


@dataclass(frozen=True)
class Chunk:
    offset: int
    # A view of memory owned elsewhere (a received message, a tensor) or bytes of its own.
    data: bytes | memoryview
    crc32c: int

    def to_proto(self) -> tensor_pb2.Chunk:
        return tensor_pb2.Chunk(offset=self.offset, data=bytes(self.data), crc32c=self.crc32c)


def check_chunk_bytes(chunk_bytes: int) -> int:
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise InvalidArgument(f"chunk size {chunk_bytes} is outside 1..{MAX_CHUNK_BYTES} bytes")
    return chunk_bytes


def iter_chunks(
    layout: Layout, buffers: Iterable[bytes | memoryview], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Chunk]:
    """Cuts per-tensor buffers, given in layout order, into chunks of ``chunk_bytes``.

    A chunk inside one buffer is a view of it (no copy); only a chunk that spans buffers is
    assembled into bytes of its own. The buffers must stay unchanged while chunks are in use.
    """
    check_chunk_bytes(chunk_bytes)
    pending = bytearray()
    offset = 0
    specs = iter(layout.tensors)
    for buf in buffers:
        spec = next(specs, None)
        view = memoryview(buf)
        view = view.cast("B") if view.nbytes else memoryview(b"")
        if spec is None or view.nbytes != spec.nbytes:
            raise InvalidArgument(
                f"buffer of {view.nbytes} bytes does not match tensor "
                f"{spec.name if spec else '(none)'!r}"
            )
        pos = 0
        while pos < view.nbytes:
            take = min(chunk_bytes - len(pending), view.nbytes - pos)
            if not pending and take == chunk_bytes:
                piece = view[pos : pos + take]
                yield Chunk(offset, piece, crc32c(piece))
                offset += take
            else:
                pending += view[pos : pos + take]
                if len(pending) == chunk_bytes:
                    data = bytes(pending)
                    yield Chunk(offset, data, crc32c(data))
                    offset += len(data)
                    pending.clear()
            pos += take
    if next(specs, None) is not None:
        raise InvalidArgument("fewer buffers than tensors in the layout")
    if pending:
        data = bytes(pending)
        yield Chunk(offset, data, crc32c(data))


def iter_chunks_from(
    layout: Layout, buffers: Iterable[bytes | memoryview], start: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Chunk]:
    """``iter_chunks`` from byte ``start`` of the flat layout on (a resumed upload): the chunks
    are cut from ``start``, the bytes before it are skipped without being read."""
    if start == 0:
        yield from iter_chunks(layout, buffers, chunk_bytes)
        return
    if not 0 < start <= layout.total_bytes:
        raise BadOffset(f"resume offset {start} is outside the layout's {layout.total_bytes} bytes")
    specs = [t for t in layout.tensors if t.end > start]
    rest = Layout(tuple(
        TensorSpec(t.name, "uint8", (t.end - max(t.offset, start),), max(t.offset, start) - start,
                   t.end - max(t.offset, start))
        for t in specs
    ))
    tails = []
    for spec, buf in zip(layout.tensors, buffers, strict=False):
        if spec.end > start:
            view = memoryview(buf)
            view = view.cast("B") if view.nbytes else memoryview(b"")
            tails.append(view[max(0, start - spec.offset):])
    for chunk in iter_chunks(rest, tails, chunk_bytes):
        yield Chunk(chunk.offset + start, chunk.data, chunk.crc32c)


def iter_range_chunks(
    read_at: Callable[[int, int], bytes], total: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Chunk]:
    """Chunks of a flat sequence of ``total`` bytes read through ``read_at(offset, size)``."""
    check_chunk_bytes(chunk_bytes)
    offset = 0
    while offset < total:
        data = read_at(offset, min(chunk_bytes, total - offset))
        yield Chunk(offset, data, crc32c(data))
        offset += len(data)


class ChunkReceiver:
    """Verifies an incoming chunk stream against a layout and hands each good chunk on.

    Chunks must arrive in order, each starting where the last ended. ``accept`` raises
    BadOffset (gap, overlap, past the end), ChecksumMismatch or InvalidArgument (empty chunk)
    before the sink sees a byte of the bad chunk; ``finish`` raises Truncated when bytes are
    missing at the end.
    """

    def __init__(
        self, layout: Layout, sink: Callable[[int, bytes | memoryview], None] | None, start: int = 0,
        *, crc_sink: Callable[[int, bytes | memoryview, int], None] | None = None,
    ) -> None:
        """``start``: the bytes before it were received and verified earlier (a resumed
        stream); the first chunk must begin there. ``crc_sink``, instead of ``sink``, also
        takes each good chunk's CRC-32C (verified, so that it need not be computed again)."""
        if (sink is None) == (crc_sink is None):
            raise TypeError("ChunkReceiver takes exactly one of sink and crc_sink")
        if not 0 <= start <= layout.total_bytes:
            raise BadOffset(f"resume offset {start} is outside the layout's {layout.total_bytes} bytes")
        self.layout = layout
        self.total = layout.total_bytes
        self.received = start
        self._sink = sink
        self._crc_sink = crc_sink

    def accept(self, offset: int, data: bytes | memoryview, crc: int) -> None:
        if offset > self.received:
            raise BadOffset(
                f"chunk at offset {offset} leaves a gap: bytes {self.received}..{offset} are missing"
            )
        if offset < self.received:
            raise BadOffset(
                f"chunk at offset {offset} overlaps bytes already received (up to {self.received})"
            )
        if not data:
            raise InvalidArgument(f"empty chunk at offset {offset}")
        if offset + len(data) > self.total:
            raise BadOffset(
                f"chunk at offset {offset} of {len(data)} bytes runs past the layout's end "
                f"({self.total} bytes)"
            )
        actual = crc32c(data)
        if actual != crc:
            raise ChecksumMismatch(
                f"checksum mismatch in chunk at offset {offset}: crc32c {actual:#010x}, "
                f"declared {crc:#010x}"
            )
        if self._crc_sink is not None:
            self._crc_sink(offset, data, crc)
        else:
            assert self._sink is not None
            self._sink(offset, data)
        self.received += len(data)

    def finish(self) -> None:
        if self.received != self.total:
            raise Truncated(
                f"stream ended after {self.received} of {self.total} bytes"
            )


class FlatBuffer:
    """A preallocated flat byte sequence that chunks are written into: the one extra copy."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.data = bytearray(layout.total_bytes)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.data[offset : offset + len(data)] = data

    def arrays(self) -> dict[str, np.ndarray]:
        """Numpy views (no copy) of each tensor, in storage dtype (bfloat16 as uint16 bits)."""
        out = {}
        for t in self.layout.tensors:
            arr = np.frombuffer(self.data, dtype=t.dt.storage, count=t.numel, offset=t.offset)
            out[t.name] = arr.reshape(t.shape)
        return out
