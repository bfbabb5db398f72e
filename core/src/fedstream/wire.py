"""A zero-copy fast path for the two hot messages: a chunk of an upload or of a download.

``UploadUpdateRequest`` and ``DownloadModelResponse`` both carry ``Chunk chunk = 2``. Parsed
by protobuf, each chunk's payload is copied twice (into the message, then out of it);
serialized by protobuf, twice more. Here a chunk message is parsed into a ``ChunkFrame``
whose data is a view of the received bytes, and written with a single copy of its data. The
bytes on the wire are ordinary protobuf: any peer may use its stock protobuf code. Any
message this parser does not recognise exactly goes to protobuf instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedstream.tensors import Chunk

_CHUNK_FIELD = 0x12  # field 2, length-delimited: the chunk in both messages
_OFFSET = 0x08  # Chunk.offset: field 1, varint
_DATA = 0x12  # Chunk.data: field 2, length-delimited
_CRC = 0x1D  # Chunk.crc32c: field 3, fixed32


class ChunkFrame:
    """Stands for a chunk-carrying UploadUpdateRequest or DownloadModelResponse."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk

    def WhichOneof(self, _group: str) -> str:  # the protobuf message API's name
        return "chunk"


class EncodedChunk:
    """A chunk message serialized once, sent as it is by every stream that sends it (many
    downloads of one version share one encoding of each block)."""

    __slots__ = ("raw", "size")

    def __init__(self, chunk: Chunk) -> None:
        self.raw = encode(chunk)
        self.size = len(chunk.data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(raw))):
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    return None


def serialize(message: Any) -> bytes:
    """Serializes a ChunkFrame with one copy of its data, an EncodedChunk as it is, anything
    else with protobuf."""
    if isinstance(message, ChunkFrame):
        return encode(message.chunk)
    if isinstance(message, EncodedChunk):
        return message.raw
    data: bytes = message.SerializeToString()
    return data


def encode(c: Chunk) -> bytes:
    """The chunk-carrying message of ``c`` (field 2 of an upload request or a download
    response), with one copy of its data."""
    size = len(c.data)
    head = (bytes([_OFFSET]) + _varint(c.offset) if c.offset else b"") + bytes([_DATA]) + _varint(size)
    tail = bytes([_CRC]) + c.crc32c.to_bytes(4, "little")
    inner = len(head) + size + len(tail)
    return b"".join((bytes([_CHUNK_FIELD]), _varint(inner), head, c.data, tail))


def parse_chunk(raw: bytes) -> ChunkFrame | None:
    """Parses a message that holds exactly one chunk; None for anything else."""
    if len(raw) < 2 or raw[0] != _CHUNK_FIELD:
        return None
    got = _read_varint(raw, 1)
    if got is None:
        return None
    length, pos = got
    end = len(raw)
    if pos + length != end:
        return None
    offset, crc = 0, 0
    data: bytes | memoryview = b""
    view = memoryview(raw)
    while pos < end:
        tag = raw[pos]
        pos += 1
        if tag == _OFFSET:
            got = _read_varint(raw, pos)
            if got is None or got[0] >= 1 << 64:
                return None
            offset, pos = got
        elif tag == _DATA:
            got = _read_varint(raw, pos)
            if got is None or got[1] + got[0] > end:
                return None
            size, pos = got
            data = view[pos : pos + size]
            pos += size
        elif tag == _CRC:
            if pos + 4 > end:
                return None
            crc = int.from_bytes(raw[pos : pos + 4], "little")
            pos += 4
        else:
            return None
    return ChunkFrame(Chunk(offset, data, crc))


def deserializer(message_cls: Any) -> Callable[[bytes], Any]:
    """A gRPC deserializer: chunk messages as ChunkFrames, all others by protobuf."""
    from_string = message_cls.FromString

    def parse(raw: bytes) -> Any:
        frame = parse_chunk(raw)
        return frame if frame is not None else from_string(raw)

    return parse
