"""A restarted aggregator rebuilds its unfinished rounds from the journal (Redis) and the kept
updates (model store): every update counted exactly once, the same model as without restart."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from fedstream.rounds import RoundKind, RoundPlan, UpdateReport
from fedstream.state import SQLiteStateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.tensors import FlatBuffer, iter_chunks
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import as_float, buffers_of, layout_of, random_model, store_model

RUN = "run-r"
BASE = f"{RUN}/000000"


def chunks_of(model):
    layout = layout_of(model)
    return layout, [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 999)]


def send(agg: AggregatorService, agent: str, model, examples: int, round_: int = 1):
    layout, chunks = chunks_of(model)
    return agg.receive_update(UpdateHeader(RUN, round_, agent, layout, examples, {}), iter(chunks))


def wait_state(agg, state, round_=1):
    give_up = time.time() + 30
    while agg.snapshot(RUN, round_).state != state and time.time() < give_up:
        time.sleep(0.02)
    return agg.snapshot(RUN, round_)


@pytest.fixture(params=["redis", "sqlite"])
def journal(request, tmp_path):
    """The journal in a state store that outlives the aggregator: Redis, or the SQLite file."""
    if request.param == "sqlite":
        return SQLiteStateStore(tmp_path / "state.db", "t1")
    return RedisStateStore(connect(request.getfixturevalue("redis_url")), "t1")


def make(journal, model_store, tmp_path, name):
    return AggregatorService(journal, model_store, tmp_path / name, chunk_bytes=4096, durable=True)


def test_a_restarted_aggregator_counts_every_update_once(journal, model_store, tmp_path):
    store_model(model_store, BASE, random_model(0, 8))
    updates = {a: (random_model(i + 1, 8), 10 * (i + 1)) for i, a in enumerate("abc")}
    first = make(journal, model_store, tmp_path, "one")
    first.open_round(RoundPlan(RUN, 1, "train", BASE, ("a", "b", "c"), 3, time.time() + 60))
    send(first, "a", *updates["a"])
    send(first, "b", *updates["b"])
    first.close()  # the process is gone: its memory, accumulator included, is lost

    second = make(journal, model_store, tmp_path, "two")
    assert second.recover() == 1
    duplicate, _ = send(second, "b", *updates["b"])
    send(second, "c", *updates["c"])
    snap = wait_state(second, "committed")

    assert duplicate
    assert sorted(r.agent_id for r in snap.reports) == ["a", "b", "c"]
    layout = layout_of(updates["a"][0])
    with model_store.open(snap.version) as reader:
        got = FlatBuffer(layout)
        for c in reader.iter_chunks():
            got.write(c.offset, c.data)
    arrays = got.arrays()
    total = sum(w for _, w in updates.values())
    for t in layout.tensors:
        if t.dtype in ("float32", "float64"):
            ref = sum(as_float(t.dtype, m[t.name][1]) * w for m, w in updates.values()) / total
            np.testing.assert_allclose(arrays[t.name], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"no journal|not found"):
        model_store.open_update(RUN, 1, "a")  # kept updates are gone once the round commits


def keep(model_store, agent, model, round_=1):
    layout = layout_of(model)
    with model_store.update_writer(RUN, round_, agent, layout) as w:
        for b in buffers_of(layout, model):
            w.write(b)
        w.commit(set_latest=False)


@pytest.mark.parametrize("version_written", [False, True])
def test_a_round_that_died_while_aggregating_is_committed_on_recovery(
    journal, model_store, tmp_path, version_written
):
    from fedstream.state import AggregationRecord

    store_model(model_store, BASE, random_model(0, 8))
    update = random_model(5, 8)
    keep(model_store, "a", update)
    journal.create_aggregation(AggregationRecord(RoundPlan(RUN, 1, RoundKind.TRAIN, BASE, ("a",), 1, time.time() + 60)))
    journal.count_update(RUN, 1, "a", UpdateReport("a", 7, bytes_received=1, weight=7.0))
    journal.set_aggregation_state(RUN, 1, "aggregating")
    if version_written:  # it died after storing the version, before journaling the commit
        store_model(model_store, f"{RUN}/000001", update)

    second = make(journal, model_store, tmp_path, "two")
    second.recover()

    assert wait_state(second, "committed").version == f"{RUN}/000001"
    assert journal.get_aggregation(RUN, 1).state == "committed"
    assert journal.list_aggregations() == []


def test_a_round_that_reached_its_target_before_dying_closes_on_recovery(journal, model_store, tmp_path):
    from fedstream.state import AggregationRecord

    store_model(model_store, BASE, random_model(0, 8))
    updates = {"a": (random_model(1, 8), 10), "b": (random_model(2, 8), 30)}
    journal.create_aggregation(AggregationRecord(
        RoundPlan(RUN, 1, RoundKind.TRAIN, BASE, ("a", "b", "c", "d"), 2, time.time() + 600, target_updates=2)))
    for agent, (model, n) in updates.items():  # both counted, the close never happened
        keep(model_store, agent, model)
        journal.count_update(RUN, 1, agent, UpdateReport(agent, n, bytes_received=1, weight=float(n)))

    second = make(journal, model_store, tmp_path, "two")
    second.recover()
    snap = wait_state(second, "committed")

    assert sorted(r.agent_id for r in snap.reports) == ["a", "b"] and sorted(snap.stragglers) == ["c", "d"]
    assert journal.get_aggregation(RUN, 1).state == "committed"


def test_without_kept_updates_a_lost_round_fails_instead_of_miscounting(journal, model_store, tmp_path):
    store_model(model_store, BASE, random_model(0, 8))
    first = AggregatorService(journal, model_store, tmp_path / "one", chunk_bytes=4096, durable=False)
    first.open_round(RoundPlan(RUN, 1, "train", BASE, ("a", "b"), 2, time.time() + 60))
    send(first, "a", random_model(1, 8), 5)
    first.close()

    second = AggregatorService(journal, model_store, tmp_path / "two", chunk_bytes=4096, durable=False)

    assert second.recover() == 0
    assert journal.get_aggregation(RUN, 1).state == "failed"
    assert "lost in a restart" in journal.get_aggregation(RUN, 1).reason


def test_a_commit_outlasts_a_10_s_s3_outage_and_latest_is_never_half_written(redis_url, s3_server, tmp_path):
    from fedstream.config import S3Settings
    from fedstream.store.s3 import S3ModelStore, make_client
    from fedstream_testing.servers import TcpProxy

    proxy = TcpProxy(s3_server.port)
    try:
        via = S3Settings(endpoint=f"127.0.0.1:{proxy.port}", access_key="t", secret_key="t", bucket="outage", retry_s=60)
        direct = S3Settings(endpoint=s3_server.endpoint, access_key="t", secret_key="t", bucket="outage")
        store = S3ModelStore(make_client(via), via, tmp_path / "staging", "t1")
        store.ensure_bucket()
        watcher = S3ModelStore(make_client(direct), direct, tmp_path / "w", "t1")
        store_model(store, BASE, random_model(0, 8))
        agg = AggregatorService(
            RedisStateStore(connect(redis_url), "t1"), store, tmp_path / "spool", chunk_bytes=4096
        )
        agg.open_round(RoundPlan(RUN, 1, "train", BASE, ("a",), 1, time.time() + 120))

        proxy.cut()
        send(agg, "a", random_model(1, 8), 5)  # the last update: the commit starts now
        seen = set()
        until = time.time() + 10
        while time.time() < until:
            seen.add(watcher.latest(RUN))
            assert agg.snapshot(RUN, 1).state == "aggregating"
            time.sleep(0.2)
        proxy.restore()
        snap = wait_state(agg, "committed")

        assert seen == {BASE}
        assert snap.version == f"{RUN}/000001"
        assert watcher.latest(RUN) == f"{RUN}/000001"
        watcher.info(f"{RUN}/000001")
    finally:
        proxy.close()


def test_spool_directories_of_dead_processes_are_removed(tmp_path, model_store):
    from fedstream.state import MemoryStateStore

    dead = tmp_path / "spool" / "999999999-deadbeef"
    dead.mkdir(parents=True)
    (dead / "upload-x.bin").write_bytes(b"x")
    alive = tmp_path / "spool" / f"{os.getpid()}-cafef00d"
    alive.mkdir()

    AggregatorService(MemoryStateStore(), model_store, tmp_path / "spool", chunk_bytes=4096)

    assert not dead.exists() and alive.exists()
