"""The flat layout and the chunk codec: round trips, validation, every bad stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.errors import BadOffset, ChecksumMismatch, InvalidArgument, InvalidLayout, Truncated
from fedstream.tensors import (
    MAX_CHUNK_BYTES,
    ChunkReceiver,
    FlatBuffer,
    Layout,
    TensorSpec,
    crc32c,
    iter_chunks,
)
from fedstream_tasks.torchio import TORCH_DTYPES, buffers_of, layout_of, state_of
from fedstream_testing.helpers import ALL_DTYPES, random_array

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)
tensor_specs = st.lists(
    st.tuples(st.sampled_from(ALL_DTYPES), shapes), min_size=0, max_size=6
)


def roundtrip(layout: Layout, buffers: list[memoryview], chunk_bytes: int) -> FlatBuffer:
    out = FlatBuffer(layout)
    receiver = ChunkReceiver(layout, out.write)
    for chunk in iter_chunks(layout, buffers, chunk_bytes):
        assert 0 < len(chunk.data) <= chunk_bytes
        receiver.accept(chunk.offset, chunk.data, chunk.crc32c)
    receiver.finish()
    return out


@settings(max_examples=200, deadline=None)
@given(specs=tensor_specs, chunk_bytes=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_any_model_roundtrips_bit_exactly(specs, chunk_bytes, seed):
    rng = np.random.default_rng(seed)
    arrays = {f"t{i}": (d, random_array(rng, d, s)) for i, (d, s) in enumerate(specs)}
    layout = Layout.build((n, d, a.shape) for n, (d, a) in arrays.items())
    buffers = [memoryview(np.ascontiguousarray(arrays[t.name][1])) for t in layout.tensors]

    out = roundtrip(layout, buffers, chunk_bytes).arrays()

    for name, (_dtype, arr) in arrays.items():
        assert out[name].shape == arr.shape
        assert out[name].tobytes() == arr.tobytes()


@settings(max_examples=50, deadline=None)
@given(
    dtypes=st.lists(st.sampled_from(list(TORCH_DTYPES)), min_size=1, max_size=5),
    chunk_bytes=st.integers(1, 64),
    seed=st.integers(0, 1000),
)
def test_torch_state_dicts_roundtrip_bit_exactly(dtypes, chunk_bytes, seed):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, dtype in enumerate(dtypes):
        raw = torch.randint(0, 256, (3 + i, 2), dtype=torch.uint8, generator=gen)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if dtype == torch.bool:
            state[f"p{i}"] = raw % 2 == 1
        else:
            state[f"p{i}"] = raw.reshape(-1)[: (raw.numel() // itemsize) * itemsize].view(dtype)
    layout = layout_of(state)

    out = state_of(roundtrip(layout, list(buffers_of(layout, state)), chunk_bytes))

    for name, t in state.items():
        assert out[name].dtype == t.dtype
        assert torch.equal(out[name].view(torch.uint8), t.contiguous().view(torch.uint8))


def test_layout_orders_by_element_size_and_aligns_every_tensor():
    layout = Layout.build([("a", "uint8", (3,)), ("b", "float32", (5,)), ("c", "int64", (1,)), ("d", "float16", (1,))])

    assert layout.names == ["c", "b", "d", "a"]
    assert all(t.offset % t.dt.itemsize == 0 for t in layout.tensors)
    assert layout.total_bytes == 8 + 20 + 2 + 3


def test_layout_proto_roundtrip():
    layout = Layout.build([("w", "bfloat16", (2, 3)), ("n", "int64", ())])

    assert Layout.from_proto(layout.to_proto()) == layout


@pytest.mark.parametrize(
    "tensors, message",
    [
        ((TensorSpec("a", "float32", (2,), 0, 8), TensorSpec("a", "float32", (1,), 8, 4)), "appears twice"),
        ((TensorSpec("a", "float32", (2,), 0, 4),), "do not fit shape"),
        ((TensorSpec("a", "float32", (2,), 4, 8),), "offset 4, expected 0"),
        ((TensorSpec("a", "uint8", (1,), 0, 1), TensorSpec("b", "float32", (1,), 1, 4)), "not aligned"),
        ((TensorSpec("", "float32", (1,), 0, 4),), "invalid tensor name"),
        ((TensorSpec("a", "complex64", (1,), 0, 8),), "unsupported dtype"),
    ],
)
def test_bad_layouts_are_named(tensors, message):
    with pytest.raises(InvalidLayout, match=message):
        Layout(tensors).validate()


def test_layout_from_proto_checks_total_and_dtype():
    msg = Layout.build([("w", "float32", (2,))]).to_proto()
    msg.total_bytes = 99
    with pytest.raises(InvalidLayout, match="total_bytes 99"):
        Layout.from_proto(msg)
    msg.total_bytes = 8
    msg.tensors[0].dtype = 0
    with pytest.raises(InvalidLayout, match="unknown dtype enum 0"):
        Layout.from_proto(msg)


def test_mismatch_names_the_difference():
    base = Layout.build([("w", "float32", (2, 2)), ("b", "float32", (2,))])

    assert base.mismatch(base) is None
    assert "unknown tensor names: 'x'" in Layout.build([("w", "float32", (2, 2)), ("x", "float32", (2,))]).mismatch(base)
    assert "missing tensors: 'b'" in Layout.build([("w", "float32", (2, 2))]).mismatch(base)
    assert "dtype float16, expected float32" in Layout.build([("w", "float16", (2, 2)), ("b", "float32", (2,))]).mismatch(base)
    assert "shape [4], expected [2, 2]" in Layout.build([("w", "float32", (4,)), ("b", "float32", (2,))]).mismatch(base)


class TestChunkReceiver:
    layout = Layout.build([("w", "float32", (4,))])  # 16 bytes

    def chunks(self):
        data = np.arange(4, dtype=np.float32).tobytes()
        return [(0, data[:8], crc32c(data[:8])), (8, data[8:], crc32c(data[8:]))]

    def receiver(self):
        got = []
        return ChunkReceiver(self.layout, lambda o, d: got.append((o, d))), got

    def test_gap_is_refused_before_the_sink(self):
        r, got = self.receiver()
        with pytest.raises(BadOffset, match=r"gap: bytes 0\.\.8 are missing"):
            r.accept(*self.chunks()[1])
        assert got == []

    def test_overlap_is_refused(self):
        r, got = self.receiver()
        first = self.chunks()[0]
        r.accept(*first)
        with pytest.raises(BadOffset, match="overlaps"):
            r.accept(*first)
        assert len(got) == 1

    def test_bad_checksum_is_refused(self):
        r, got = self.receiver()
        offset, data, crc = self.chunks()[0]
        with pytest.raises(ChecksumMismatch, match="offset 0"):
            r.accept(offset, data, crc ^ 1)
        assert got == []

    def test_past_the_end_is_refused(self):
        r, _ = self.receiver()
        data = bytes(20)
        with pytest.raises(BadOffset, match="runs past"):
            r.accept(0, data, crc32c(data))

    def test_empty_chunk_is_refused(self):
        r, _ = self.receiver()
        with pytest.raises(InvalidArgument, match="empty chunk"):
            r.accept(0, b"", crc32c(b""))

    def test_truncation_is_detected(self):
        r, _ = self.receiver()
        r.accept(*self.chunks()[0])
        with pytest.raises(Truncated, match="after 8 of 16 bytes"):
            r.finish()


def test_chunk_size_limits():
    layout = Layout.build([("w", "uint8", (4,))])
    with pytest.raises(InvalidArgument, match="chunk size"):
        list(iter_chunks(layout, [b"abcd"], MAX_CHUNK_BYTES + 1))
    with pytest.raises(InvalidArgument, match="does not match tensor"):
        list(iter_chunks(layout, [b"abc"], 2))


def test_chunks_never_exceed_the_grpc_message_limit():
    assert MAX_CHUNK_BYTES + (64 << 10) <= 4 << 20
