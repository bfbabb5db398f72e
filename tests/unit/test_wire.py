"""The zero-copy chunk codec speaks plain protobuf: both ways, and it falls back when unsure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream import wire
from fedstream.tensors import Chunk
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import tensor_pb2

MESSAGES = [pb.UploadUpdateRequest, pb.DownloadModelResponse]

chunks = st.builds(
    Chunk,
    offset=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=300),
    crc32c=st.integers(0, 2**32 - 1),
)


@settings(max_examples=300)
@given(chunk=chunks, cls=st.sampled_from(MESSAGES))
def test_frames_parse_as_protobuf_and_back(chunk, cls):
    raw = wire.serialize(wire.ChunkFrame(chunk))

    parsed = cls.FromString(raw)
    frame = wire.parse_chunk(raw)

    assert parsed.WhichOneof("payload") == "chunk"
    assert (parsed.chunk.offset, parsed.chunk.data, parsed.chunk.crc32c) == (chunk.offset, chunk.data, chunk.crc32c)
    assert frame is not None
    assert (frame.chunk.offset, bytes(frame.chunk.data), frame.chunk.crc32c) == (chunk.offset, chunk.data, chunk.crc32c)


@settings(max_examples=300)
@given(chunk=chunks, cls=st.sampled_from(MESSAGES))
def test_protobuf_chunk_messages_take_the_fast_path(chunk, cls):
    raw = cls(chunk=tensor_pb2.Chunk(offset=chunk.offset, data=chunk.data, crc32c=chunk.crc32c)).SerializeToString()

    got = wire.deserializer(cls)(raw)

    assert isinstance(got, wire.ChunkFrame)
    assert (got.chunk.offset, bytes(got.chunk.data), got.chunk.crc32c) == (chunk.offset, chunk.data, chunk.crc32c)


@settings(max_examples=300)
@given(raw=st.binary(max_size=64))
def test_anything_else_goes_to_protobuf(raw):
    frame = wire.parse_chunk(raw)
    if frame is None:
        return
    # When the fast path accepts bytes, protobuf reads them the same way.
    parsed = pb.UploadUpdateRequest.FromString(raw)
    assert (parsed.chunk.offset, parsed.chunk.data, parsed.chunk.crc32c) == (
        frame.chunk.offset, bytes(frame.chunk.data), frame.chunk.crc32c)


@pytest.mark.parametrize(
    "message",
    [
        pb.UploadUpdateRequest(header=pb.UpdateHeader(run_id="r", round=3, agent_id="a")),
        pb.DownloadModelResponse(header=pb.ModelHeader(version="r/000001")),
        pb.UploadUpdateRequest(),
    ],
)
def test_headers_are_left_to_protobuf(message):
    raw = message.SerializeToString()
    got = wire.deserializer(type(message))(raw)
    assert not isinstance(got, wire.ChunkFrame)
    assert got == message
    assert wire.serialize(message) == raw


def test_data_is_a_view_not_a_copy():
    raw = wire.serialize(wire.ChunkFrame(Chunk(5, b"x" * 1000, 7)))
    frame = wire.parse_chunk(raw)
    assert isinstance(frame.chunk.data, memoryview)
    assert frame.chunk.data.obj is raw


@settings(max_examples=100)
@given(chunk=chunks, cls=st.sampled_from(MESSAGES))
def test_an_encoded_chunk_is_sent_as_the_frame_would_be(chunk, cls):
    encoded = wire.EncodedChunk(chunk)

    raw = wire.serialize(encoded)

    assert raw == wire.serialize(wire.ChunkFrame(chunk))
    assert cls.FromString(raw).chunk.data == chunk.data
    assert encoded.size == len(chunk.data)
