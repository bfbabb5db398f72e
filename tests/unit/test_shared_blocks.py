"""Downloads of one version at the same time share each block: read, checked and encoded once,
bounded in memory, dropped when the last download ends, a corrupt block refused to each."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fedstream import wire
from fedstream.errors import CorruptModel
from fedstream.store import LocalModelStore, ModelReader
from fedstream.tensors import Layout
from fedstream.v1 import aggregator_pb2 as pb
from fedstream_aggregator.serving import SharedBlocks, open_model

MiB = 1 << 20
VERSION = "run-s/000001"


@pytest.fixture
def stored(tmp_path: Path) -> tuple[LocalModelStore, bytes]:
    store = LocalModelStore(tmp_path / "models", "t1")
    values = np.random.default_rng(3).standard_normal((7 * MiB // 2) // 4, dtype=np.float32)  # 3.5 blocks
    layout = Layout.build([("w", "float32", values.shape)])
    with store.writer(VERSION, layout, {}) as w:
        w.write(memoryview(values))
        w.commit()
    return store, values.tobytes()


def download(store: LocalModelStore, shared: SharedBlocks | None, offset: int = 0) -> list[object]:
    _, messages = open_model(store, "t1", "run-s", VERSION, MiB, offset, shared)
    return list(messages)


def data_of(messages: list[object]) -> bytes:
    return b"".join(pb.DownloadModelResponse.FromString(wire.serialize(m)).chunk.data for m in messages)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The blocks read from the store and checked, in order."""
    seen: list[int] = []
    original = ModelReader.verified_block

    def counting(self: ModelReader, i: int):  # type: ignore[no-untyped-def]
        seen.append(i)
        return original(self, i)

    monkeypatch.setattr(ModelReader, "verified_block", counting)
    return seen


def test_downloads_streaming_together_share_one_read_and_encoding_of_each_block(stored, loads):
    store, data = stored
    shared = SharedBlocks()
    _, first = open_model(store, "t1", "run-s", VERSION, MiB, 0, shared)
    _, second = open_model(store, "t1", "run-s", VERSION, MiB, 0, shared)

    pairs = list(zip(first, second, strict=True))

    assert all(a is b for a, b in pairs)
    assert data_of([a for a, _ in pairs]) == data
    assert loads == [0, 1, 2, 3]


def test_many_threads_downloading_at_once_read_each_block_once(stored, loads):
    store, data = stored
    shared = SharedBlocks()
    got: list[bytes] = []
    start = threading.Barrier(8)

    def one() -> None:
        _, messages = open_model(store, "t1", "run-s", VERSION, MiB, 0, shared)
        # Every download is streaming (has its first block) before any goes on: one that ended
        # before another began would rightly have dropped the blocks, and the next reads them again.
        first = next(messages)
        start.wait()
        got.append(data_of([first, *messages]))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert got == [data] * 8
    assert sorted(loads) == [0, 1, 2, 3]
    assert shared.held_bytes == 0  # the last download ended: nothing is kept


def test_shared_blocks_stay_within_their_bound_and_resume_at_a_block(stored, loads):
    store, data = stored
    shared = SharedBlocks(max_bytes=2 * MiB + 64)  # two encoded blocks at most
    _, first = open_model(store, "t1", "run-s", VERSION, MiB, 0, shared)
    held = []
    for _ in first:
        held.append(shared.held_bytes)

    resumed = download(store, shared, offset=2 * MiB)

    assert max(held) <= 2 * MiB + 64
    assert data_of(resumed) == data[2 * MiB:]


def test_a_download_not_on_the_block_grid_is_served_as_before(stored, loads):
    store, data = stored

    messages = download(store, SharedBlocks(), offset=12345)

    assert all(isinstance(m, wire.ChunkFrame) for m in messages)
    assert data_of(messages) == data[12345:]


def test_a_corrupt_block_is_refused_to_every_download(stored, tmp_path):
    store, _ = stored
    path = next((tmp_path / "models").rglob("000001.safetensors"))
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # the last block
    path.write_bytes(bytes(raw))
    shared = SharedBlocks()

    for _ in range(2):
        with pytest.raises(CorruptModel, match="checksum mismatch"):
            download(store, shared)
    assert shared.held_bytes == 0
