"""The accumulator kept in a memory-mapped file above its memory budget gives, bit for bit,
what the in-memory one gives, for every dtype, window size and compressed update; the layout
math holds past 2^32 bytes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream import sums
from fedstream.aggregation import WeightedAccumulator, make_accumulator
from fedstream.compression import wire_layout
from fedstream.errors import ResourceExhausted
from fedstream.store.s3 import MAX_PARTS, part_bytes_for
from fedstream.sums import FileSums, MemorySums
from fedstream.tensors import FlatBuffer, Layout
from fedstream_aggregator.spool import Spool
from fedstream_testing.helpers import buffers_of, layout_of, random_array, random_model


def flat(model) -> tuple[Layout, FlatBuffer]:
    layout = layout_of(model)
    buf = FlatBuffer(layout)
    for t, b in zip(layout.tensors, buffers_of(layout, model), strict=True):
        buf.write(t.offset, bytes(b))
    return layout, buf


def reader(buf: FlatBuffer):
    def read_into(offset: int, out: memoryview) -> None:
        out[:] = buf.data[offset : offset + len(out)]

    return read_into


def int8_update(wire: Layout, seed: int) -> FlatBuffer:
    """An update as int8 compression sends it: int8 values and a float32 scale per floating tensor."""
    rng = np.random.default_rng(seed)
    buf = FlatBuffer(wire)
    for t in wire.tensors:
        values = np.float32([rng.uniform(0.001, 0.1)]) if t.name.endswith(":scale") else random_array(rng, t.dtype, t.shape)
        buf.write(t.offset, np.ascontiguousarray(values).tobytes())
    return buf


def state(acc: WeightedAccumulator) -> list[bytes]:
    return [a.tobytes() for a in acc.sums()]


@contextlib.contextmanager
def windows_of(window_bytes: int) -> Iterator[None]:
    """File windows of ``window_bytes`` (a few elements), so that every tensor spans several."""
    saved = sums.MIN_WINDOW_BYTES, sums.MAX_WINDOW_BYTES
    sums.MIN_WINDOW_BYTES = sums.MAX_WINDOW_BYTES = window_bytes
    try:
        yield
    finally:
        sums.MIN_WINDOW_BYTES, sums.MAX_WINDOW_BYTES = saved


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.integers(1, 5000), min_size=1, max_size=5), seed=st.integers(0, 10_000),
       window=st.sampled_from([1, 8, 24, 1000, 4096]))
def test_file_accumulator_is_bit_identical_to_memory(weights, seed, window, tmp_path_factory):
    updates = [flat(random_model(seed + i, 3)) for i in range(len(weights))]
    layout = updates[0][0]
    in_memory = make_accumulator(layout, 1 << 40, tmp_path_factory.mktemp("acc"))
    with windows_of(window):
        on_disk = make_accumulator(layout, 0, tmp_path_factory.mktemp("acc"))

    for (_, buf), w in zip(updates, weights, strict=True):
        in_memory.fold(reader(buf), float(w))
        on_disk.fold(reader(buf), float(w))

    assert isinstance(on_disk._sums, FileSums) and isinstance(in_memory._sums, MemorySums)
    assert state(on_disk) == state(in_memory)
    got, want = dict(on_disk.average()), dict(in_memory.average())
    assert list(got) == list(want) == layout.names
    for name in layout.names:
        assert got[name].dtype == want[name].dtype
        assert got[name].tobytes() == want[name].tobytes(), name


@windows_of(40)
def test_compressed_updates_and_merges_fold_identically(tmp_path):
    layout, _ = flat(random_model(1, 4))
    wire = wire_layout(layout, "int8")
    updates = [int8_update(wire, seed) for seed in (2, 3)]
    accs = [make_accumulator(layout, budget, tmp_path / str(budget)) for budget in (1 << 40, 0)]
    partials = [make_accumulator(layout, budget, tmp_path / f"p{budget}") for budget in (1 << 40, 0)]

    for acc, part in zip(accs, partials, strict=True):
        for w, u in zip((3.0, 5.0), updates, strict=True):
            acc.fold(reader(u), w, wire)
            part.fold(reader(u), w, wire)
        sums_buf = FlatBuffer(part.sums_layout())
        for t, a in zip(part.sums_layout().tensors, part.sums(), strict=True):
            sums_buf.write(t.offset, a.tobytes())
        acc.merge(reader(sums_buf), part.total_weight, part.count)

    assert state(accs[0]) == state(accs[1])
    assert [(n, a.tobytes()) for n, a in accs[0].average()] == [(n, a.tobytes()) for n, a in accs[1].average()]


@windows_of(64)
def test_means_come_in_windows_for_a_file(tmp_path):
    layout, buf = flat({"w": ("float32", np.arange(100, dtype=np.float32))})
    acc = make_accumulator(layout, 0, tmp_path)
    acc.fold(reader(buf), 2.0)

    pieces = [(t.name, first, values.size) for t, first, values in acc.means()]

    assert pieces == [("w", 0, 16), ("w", 16, 16), ("w", 32, 16), ("w", 48, 16), ("w", 64, 16), ("w", 80, 16),
                      ("w", 96, 4)]


def test_a_file_accumulator_holds_no_file_name_and_reserves_its_space(tmp_path):
    layout = Layout.build([("w", "float32", (1000,))])

    acc = make_accumulator(layout, 0, tmp_path)

    assert acc.nbytes == 4000
    assert list(tmp_path.iterdir()) == []  # unlinked from the start: nothing left behind by a crash


def test_a_full_disk_is_known_when_the_accumulator_is_made(tmp_path):
    layout = Layout.build([("w", "float32", (1 << 60,))])  # 4 EiB

    with pytest.raises(ResourceExhausted, match=r"no room .* for an accumulator of"):
        FileSums(layout, tmp_path, 1 << 20)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 << 31), min_size=1, max_size=4),
       dtypes=st.lists(st.sampled_from(["bfloat16", "float32", "float64", "int8"]), min_size=4, max_size=4))
def test_layouts_past_4_gib_keep_64_bit_offsets(sizes, dtypes):
    items = [(f"t{i}", dtypes[i], (n,)) for i, n in enumerate(sizes)]

    layout = Layout.build(items)
    again = Layout.from_proto(layout.to_proto())

    assert again == layout
    assert layout.total_bytes == sum(n * {"bfloat16": 2, "float32": 4, "float64": 8, "int8": 1}[d]
                                     for (_, d, (n,)) in items)
    end = 0
    for t in layout.tensors:
        assert t.offset == end and t.offset % t.dt.itemsize == 0
        end = t.end


def test_windows_past_4_gib_of_a_file_map_their_own_elements(tmp_path, monkeypatch):
    # A sparse file: the 4 GiB before the tensor are never allocated nor touched.
    monkeypatch.setattr(sums.os, "posix_fallocate", lambda fd, offset, size: os.ftruncate(fd, offset + size))
    layout = Layout.build([("big", "float32", ((1 << 30) + 3,)), ("tail", "float32", (10,))])
    tail = layout.spec("tail")
    assert tail.offset > 1 << 32
    file_sums = FileSums(layout, tmp_path, 1 << 20)

    with file_sums.window(tail, 4, 6) as window:
        window[:] = np.arange(6, dtype=np.float32) + 1

    assert file_sums.whole(tail).tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    with file_sums.window(layout.spec("big"), (1 << 30) + 1, 2) as window:
        assert window.tolist() == [0, 0]


def test_spool_files_take_offsets_past_4_gib(tmp_path):
    spool = Spool(tmp_path)  # sparse: nothing reserved
    try:
        spool.write((5 << 30) + 7, b"past four gigabytes")
        out = memoryview(bytearray(19))
        spool.read_into((5 << 30) + 7, out)
        assert bytes(out) == b"past four gigabytes"
    finally:
        spool.close()


@pytest.mark.parametrize("size, configured, expected", [
    (0, 16 << 20, 16 << 20),
    (6 << 30, 16 << 20, 16 << 20),  # 384 parts
    (160 << 30, 16 << 20, 17 << 20),  # 16 MiB parts would make 10,240
    (5 << 40, 16 << 20, 525 << 20),  # S3's largest object
    (1 << 50, 16 << 20, 5 << 30),  # past S3's limit: its largest part, which S3 then refuses
])
def test_s3_parts_stay_within_10000(size, configured, expected):
    got = part_bytes_for(size, configured)

    assert got == expected
    assert got % (1 << 20) == 0 and (-(-size // got) <= MAX_PARTS or got == 5 << 30)
