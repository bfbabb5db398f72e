"""Resumable transfers over a real aggregator on loopback: an upload cut at any chunk resumes
from what the aggregator verified and kept (after a restart too, with Redis and with SQLite),
counts exactly once, and is refused clearly once its round has closed; kept partial uploads
expire and are bounded in space; a download cut mid-way resumes bit-exactly."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import grpc
import pytest

from fedstream import wire
from fedstream.errors import Truncated
from fedstream.grpcutil import channel
from fedstream.rounds import RoundPlan
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream.state import MemoryStateStore, SQLiteStateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.tensors import Chunk, Layout, iter_chunks
from fedstream.transfer import (
    DownloadProgress,
    download_call,
    download_model,
    receive_model,
    upload_call,
    upload_id_of,
    upload_status,
    upload_update,
)
from fedstream.v1 import aggregator_pb2 as pb
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import wait_until

RUN = "run-z"
BASE = f"{RUN}/000000"
CHUNK = 500


@dataclass
class Update:
    layout: Layout
    buffers: list[memoryview]
    chunks: list[Chunk]
    upload_id: str

    @property
    def data(self) -> bytes:
        return b"".join(bytes(b) for b in self.buffers)

    def offset_of(self, i: int) -> int:
        """Where chunk ``i`` starts (the total after the last)."""
        return self.chunks[i].offset if i < len(self.chunks) else self.layout.total_bytes


def update_of(seed: int) -> Update:
    model = random_model(seed, scale=16)
    layout = layout_of(model)
    buffers = list(buffers_of(layout, model))
    return Update(layout, buffers, list(iter_chunks(layout, buffers, CHUNK)), upload_id_of(layout, buffers))


def serve(state, model_store, spool: Path, **limits) -> AggregatorServer:
    service = AggregatorService(state, model_store, spool, chunk_bytes=4096, durable=True)
    return build_server(service, "127.0.0.1", 0, max_workers=16, check_agents=False, limits=AggregatorLimits(**limits))


def open_round(server: AggregatorServer, participants=("a", "b"), deadline_s: float = 60.0, min_updates: int = 0) -> None:
    server.service.open_round(RoundPlan(RUN, 1, "train", BASE, participants, min_updates or len(participants),
                                        time.time() + deadline_s))


def header(agent: str, u: Update, offset: int, upload_id: str | None = None) -> pb.UploadUpdateRequest:
    return pb.UploadUpdateRequest(header=pb.UpdateHeader(
        run_id=RUN, round=1, agent_id=agent, layout=u.layout.to_proto(), num_examples=5,
        upload_id=u.upload_id if upload_id is None else upload_id, resume_offset=offset,
    ))


def status(ch: grpc.Channel, agent: str, u: Update) -> pb.UploadStatusResponse:
    got = upload_status(ch, RUN, 1, agent, u.upload_id, timeout=10)
    assert got is not None
    return got


def cut(ch: grpc.Channel, agent: str, u: Update, start: int, stop: int) -> None:
    """Streams chunks [start, stop) of ``u`` (resumed at chunk ``start``), waits until the
    aggregator holds them, then the client cancels its stream."""
    release = threading.Event()

    def requests():
        yield header(agent, u, u.offset_of(start))
        for c in u.chunks[start:stop]:
            yield wire.ChunkFrame(c)
        release.wait(30)

    call = upload_call(ch).future(requests(), timeout=30)
    try:
        wait_until(lambda: status(ch, agent, u).offset == u.offset_of(stop), what=f"holds {u.offset_of(stop)} bytes")
    finally:
        call.cancel()
        release.set()


def resume(ch: grpc.Channel, agent: str, u: Update, offset: int | None = None) -> pb.UploadUpdateResponse:
    """Sends the rest of ``u`` from where the aggregator says (or ``offset``)."""
    start = status(ch, agent, u).offset if offset is None else offset
    return upload_update(ch, timeout=30, run_id=RUN, round_=1, agent_id=agent, layout=u.layout,
                         buffers=u.buffers, num_examples=5, metrics={}, chunk_bytes=CHUNK,
                         upload_id=u.upload_id, resume_offset=start)


def kept_bytes(model_store, agent: str) -> bytes:
    with model_store.open_update(RUN, 1, agent) as reader:
        return reader.read_at(0, reader.layout.total_bytes)


def counted(server: AggregatorServer, agent: str) -> int:
    return sum(r.agent_id == agent for r in server.service.snapshot(RUN, 1).reports)


@pytest.fixture
def server(tmp_path, model_store):
    store_model(model_store, BASE, random_model(0, scale=16))
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool", min_download_chunk_bytes=256)
    open_round(server, participants=("a", "b", "c"))  # open after two updates: their kept files stay readable
    yield server
    server.stop(None)


@pytest.fixture
def ch(server):
    c = channel(f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_upload_cut_at_random_chunks_resumes_and_counts_once(server, ch, model_store, seed):
    u = update_of(seed)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(u.chunks)), 3))
    start = 0
    for stop in [cuts[0], cuts[0], *cuts[1:]]:  # the second cut sends nothing new
        cut(ch, "a", u, start, stop)
        start = stop

    reply = resume(ch, "a", u)
    again = resume(ch, "a", u, offset=0)  # a retry after the confirmation is a duplicate

    assert not reply.duplicate and reply.bytes_received == u.layout.total_bytes
    assert again.duplicate and status(ch, "a", u).counted
    assert counted(server, "a") == 1
    assert kept_bytes(model_store, "a") == u.data  # bit-exact, however it was cut
    assert server.service.partials.held_bytes == 0


def test_a_resume_from_an_offset_the_aggregator_does_not_hold_is_refused(server, ch):
    u = update_of(4)
    cut(ch, "a", u, 0, 5)

    with pytest.raises(grpc.RpcError) as e:
        resume(ch, "a", u, offset=u.offset_of(7))

    assert e.value.code() == grpc.StatusCode.ABORTED
    assert "ask UploadStatus" in e.value.details()
    assert status(ch, "a", u).offset == u.offset_of(5)  # nothing was lost by the refusal
    assert not resume(ch, "a", u).duplicate


@pytest.fixture
def buffered(tmp_path, model_store):
    """An aggregator whose round 1 of RUN is a buffer of an asynchronous run."""
    store_model(model_store, BASE, random_model(0, scale=16))
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool", min_download_chunk_bytes=256)
    buffer = BufferSpec(2, 2, StalenessFunction.CONSTANT, max_staleness=2)
    server.service.open_round(RoundPlan(RUN, 1, "train", BASE, ("a", "b"), 1, time.time() + 60, buffer=buffer))
    yield server
    server.stop(None)


@pytest.mark.parametrize("mode", ["synchronous", "buffered"])
def test_a_resumed_upload_takes_the_place_of_its_stale_stream(request, mode, model_store):
    server = request.getfixturevalue("server" if mode == "synchronous" else "buffered")
    ch = channel(f"127.0.0.1:{server.port}")
    request.addfinalizer(ch.close)
    u = update_of(5)
    release = threading.Event()

    def stalled():
        yield header("a", u, 0)
        yield from (wire.ChunkFrame(c) for c in u.chunks[:4])
        release.wait(30)  # the link died without a word: the server still holds the stream

    stale = upload_call(ch).future(stalled(), timeout=30)
    wait_until(lambda: status(ch, "a", u).offset == u.offset_of(4))

    reply = resume(ch, "a", u)
    release.set()

    assert not reply.duplicate
    assert counted(server, "a") == 1 and status(ch, "a", u).counted
    if mode == "synchronous":
        assert kept_bytes(model_store, "a") == u.data
    with pytest.raises(grpc.RpcError) as ended:
        stale.result(timeout=10)
    assert "took this stream's place" in ended.value.details()


def test_an_upload_without_resume_fields_still_works_and_keeps_nothing(server, ch, model_store):
    u = update_of(6)
    release = threading.Event()

    def old_style(n: int):
        yield header("a", u, 0, upload_id="")
        yield from (wire.ChunkFrame(c) for c in u.chunks[:n])
        if n < len(u.chunks):
            release.wait(30)

    call = upload_call(ch).future(old_style(6), timeout=30)
    time.sleep(0.2)
    call.cancel()
    release.set()
    # As an old agent does: tried again while the server has not yet seen the first one end.
    give_up = time.monotonic() + 10
    while True:
        try:
            reply = upload_call(ch)(old_style(len(u.chunks)), timeout=30)
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ABORTED or time.monotonic() > give_up:
                raise
            time.sleep(0.1)

    assert not reply.duplicate and reply.bytes_received == u.layout.total_bytes
    assert kept_bytes(model_store, "a") == u.data
    assert server.service.partials.held_bytes == 0


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_resume_against_a_round_that_closed_meanwhile_is_refused(tmp_path, model_store, how):
    store_model(model_store, BASE, random_model(0, scale=16))
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool")
    open_round(server, deadline_s=60 if how == "cancelled" else 2.0, min_updates=1)
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        u = update_of(7)
        cut(ch, "a", u, 0, 5)
        if how == "cancelled":
            server.service.abort_round(RUN, 1, "run cancelled by token tok-1")
        else:
            resume_b = upload_update(ch, timeout=30, run_id=RUN, round_=1, agent_id="b", layout=u.layout,
                                     buffers=u.buffers, num_examples=5, metrics={}, chunk_bytes=CHUNK)
            assert not resume_b.duplicate
            wait_until(lambda: server.service.snapshot(RUN, 1).state == "committed", timeout=15)

        for attempt in (lambda: status(ch, "a", u), lambda: resume(ch, "a", u, offset=u.offset_of(5))):
            with pytest.raises(grpc.RpcError) as e:
                attempt()
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert ("cancelled" if how == "cancelled" else "not accepting updates") in e.value.details()
        assert server.service.partials.sweep() == 1  # what the periodic sweep does
        assert server.service.partials.held_bytes == 0
        assert counted(server, "a") == 0
    finally:
        ch.close()
        server.stop(None)


def test_a_partial_upload_expires_and_its_space_is_reclaimed(tmp_path, model_store):
    store_model(model_store, BASE, random_model(0, scale=16))
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool", partial_upload_ttl_s=0.5)
    open_round(server)
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        u = update_of(8)
        cut(ch, "a", u, 0, 6)
        partial_dir = server.service.partials.directory
        assert server.service.partials.held_bytes == u.layout.total_bytes
        assert any(partial_dir.iterdir())

        wait_until(lambda: server.service.partials.held_bytes == 0, what="the partial upload expires")

        assert not any(partial_dir.iterdir())  # its file, log and record are deleted
        assert status(ch, "a", u).offset == 0
        with pytest.raises(grpc.RpcError) as e:
            resume(ch, "a", u, offset=u.offset_of(6))
        assert e.value.code() == grpc.StatusCode.ABORTED
        assert not resume(ch, "a", u).duplicate  # from byte 0
    finally:
        ch.close()
        server.stop(None)


def test_the_space_bound_refuses_a_resumable_upload_naming_the_limit(tmp_path, model_store):
    store_model(model_store, BASE, random_model(0, scale=16))
    u, v = update_of(9), update_of(10)
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool",
                   partial_upload_max_bytes=u.layout.total_bytes * 3 // 2)
    open_round(server)
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        cut(ch, "a", u, 0, 3)

        with pytest.raises(grpc.RpcError) as e:
            resume(ch, "b", v, offset=0)

        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "partial_upload_max_bytes" in e.value.details()
        assert not upload_call(ch)(iter([header("b", v, 0, upload_id=""), *map(wire.ChunkFrame, v.chunks)]),
                                   timeout=30).duplicate  # a plain upload is not bounded by it
        assert not resume(ch, "a", u).duplicate
    finally:
        ch.close()
        server.stop(None)


@pytest.fixture(params=["redis", "sqlite"])
def journal(request, tmp_path):
    """A state store that outlives the aggregator: Redis, or the embedded SQLite file."""
    if request.param == "sqlite":
        return SQLiteStateStore(tmp_path / "state.db", "t1")
    return RedisStateStore(connect(request.getfixturevalue("redis_url")), "t1")


@pytest.mark.parametrize("torn_tail", [False, True])
def test_a_partial_upload_survives_an_aggregator_restart(journal, model_store, tmp_path, torn_tail):
    store_model(model_store, BASE, random_model(0, scale=16))
    u = update_of(11)
    first = serve(journal, model_store, tmp_path / "spool")
    open_round(first)
    ch = channel(f"127.0.0.1:{first.port}")
    cut(ch, "a", u, 0, 4)
    cut(ch, "a", u, 4, 9)
    ch.close()
    first.stop(None)  # the process is gone; the spool directory stays
    if torn_tail:  # a power cut lost the last chunk's bytes: the log names them, the CRC refuses them
        (data,) = first.service.partials.directory.glob("*.bin")
        with open(data, "r+b") as f:
            f.seek(u.offset_of(8))
            f.write(bytes(CHUNK))

    second = serve(journal, model_store, tmp_path / "spool")
    second.service.recover()
    ch = channel(f"127.0.0.1:{second.port}")
    try:
        held = status(ch, "a", u).offset
        cut(ch, "a", u, 8 if torn_tail else 9, 12)
        reply = resume(ch, "a", u)

        assert held == u.offset_of(8 if torn_tail else 9)
        assert not reply.duplicate and counted(second, "a") == 1
        assert kept_bytes(model_store, "a") == u.data
        assert resume(ch, "a", u, offset=0).duplicate
    finally:
        ch.close()
        second.stop(None)


def test_a_download_cut_midway_resumes_bit_exactly(server, ch, model_store):
    with model_store.open(BASE) as reader:
        stored = reader.read_at(0, reader.layout.total_bytes)
    progress = DownloadProgress()
    first = download_call(ch)(pb.DownloadModelRequest(run_id=RUN), timeout=30)  # 4096-byte chunks
    with pytest.raises(Truncated):
        receive_model(islice(first, 1 + 3), progress=progress)  # the header and 3 chunks, then the cut
    first.cancel()
    seen: list[int] = []

    model = download_model(ch, RUN, "", chunk_bytes=1000, progress=progress, on_progress=lambda n, _: seen.append(n))

    assert progress.received == len(stored) and bytes(model.buffer.data) == stored
    assert model.version == BASE
    assert seen[0] == 3 * 4096 + 1000  # it went on from the 3 chunks it had, not from byte 0


def test_a_download_offset_past_the_end_is_refused(server, ch):
    with pytest.raises(grpc.RpcError) as e:
        list(download_call(ch)(pb.DownloadModelRequest(run_id=RUN, version=BASE, offset=1 << 40), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "past the end" in e.value.details()


def test_an_init_model_upload_resumes_and_becomes_version_zero_as_sent(tmp_path, model_store):
    server = serve(MemoryStateStore("t1"), model_store, tmp_path / "spool")
    server.service.open_round(RoundPlan("run-i", 0, "init", "", ("a",), 1, time.time() + 60))
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        u = update_of(12)
        release = threading.Event()

        def first():
            yield pb.UploadUpdateRequest(header=pb.UpdateHeader(run_id="run-i", round=0, agent_id="a",
                                                                layout=u.layout.to_proto(), upload_id=u.upload_id))
            yield from (wire.ChunkFrame(c) for c in u.chunks[:5])
            release.wait(30)

        call = upload_call(ch).future(first(), timeout=30)
        wait_until(lambda: upload_status(ch, "run-i", 0, "a", u.upload_id).offset == u.offset_of(5))
        call.cancel()
        release.set()
        reply = upload_update(ch, timeout=30, run_id="run-i", round_=0, agent_id="a", layout=u.layout,
                              buffers=u.buffers, num_examples=0, metrics={}, chunk_bytes=CHUNK,
                              upload_id=u.upload_id, resume_offset=u.offset_of(5))
        wait_until(lambda: server.service.snapshot("run-i", 0).state == "committed")

        assert not reply.duplicate
        with model_store.open("run-i/000000") as reader:
            assert reader.read_at(0, reader.layout.total_bytes) == u.data
    finally:
        ch.close()
        server.stop(None)


def test_a_resumable_upload_refused_once_whole_leaves_nothing_behind(server, ch):
    u = update_of(13)
    i = u.layout.names.index("conv.weight")
    bad = bytearray(u.buffers[i])
    bad[:4] = bytes.fromhex("0000c07f")  # a float32 NaN
    u.buffers[i] = memoryview(bytes(bad))
    u.upload_id = upload_id_of(u.layout, u.buffers)
    cut_at = 3
    u.chunks = list(iter_chunks(u.layout, u.buffers, CHUNK))
    cut(ch, "a", u, 0, cut_at)

    with pytest.raises(grpc.RpcError) as e:
        resume(ch, "a", u)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in e.value.details()
    assert server.service.partials.held_bytes == 0
    assert not any(server.service.partials.directory.iterdir())
    assert status(ch, "a", u).offset == 0


def test_a_resumable_upload_rewrites_the_file_of_a_counted_one(server, ch, model_store):
    a, b = update_of(7), update_of(8)
    assert not resume(ch, "a", a, offset=0).duplicate
    pooled = list(server.service.spools.directory.glob("*.bin"))
    assert len(pooled) == 1  # a's file, back in the pool once a counted

    inode = pooled[0].stat().st_ino
    cut(ch, "b", b, 0, 3)
    partial_files = [p.stat().st_ino for p in server.service.partials.directory.glob("*.bin")]
    reply = resume(ch, "b", b)

    assert partial_files == [inode]  # b spooled into it, not a new file
    assert not reply.duplicate and reply.bytes_received == b.layout.total_bytes
    assert kept_bytes(model_store, "b") == b.data
    assert counted(server, "b") == 1
