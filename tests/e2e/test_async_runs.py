"""Buffered asynchronous runs (FedBuff) with the services and agents as processes: the run
commits its versions, each from buffer_size updates, every update counted once, through a
SIGKILL of the aggregator or the scheduler mid-buffer, a Redis restart and an S3 outage."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from test_crashes import Cluster  # the crash tests' services on fixed ports

from fedstream.state import SQLiteStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_testing.local import LocalFederation
from fedstream_testing.servers import RedisServer


def test_an_asynchronous_run_commits_its_versions_counting_every_update_once(tmp_path):
    spec = scheduler_pb2.RunSpec(
        task="digits", rounds=3, min_agents=3, round_timeout_s=120, wait_for_agents_s=60,
        training=round_pb2.TrainingConfig(local_epochs=1, batch_size=64, seed=7),
        asynchronous=round_pb2.AsynchronousSpec(
            buffer_size=2, concurrency=3, max_staleness=3,
            staleness=round_pb2.StalenessSpec(function="polynomial", a=0.5),
        ),
    )
    with LocalFederation(tmp_path / "fed") as fed:
        aggregator = fed.start_aggregator()
        scheduler = fed.start_scheduler(aggregator, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for i in range(3):
            fed.start_agent(f"site-{i}", scheduler, i, 3, {"DEVICE": "cpu", "CPU_THREADS": "1"})

        run = fed.run(scheduler, spec, "fedbuff", "asynchronous")

        assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason + fed.tail("scheduler", 30)
        state = SQLiteStateStore(fed.state_file, "default")
        rounds = state.list_rounds("fedbuff")
        assert [(r.round, r.kind, r.state) for r in rounds] == [
            (0, "init", "committed"), (1, "train", "committed"), (2, "train", "committed"), (3, "train", "committed"),
        ]
        updates = Counter()
        for r in rounds[1:]:
            assert len(r.reports) == 2, r.reports  # a version every buffer_size updates
            assert r.stragglers == []
            for report in r.reports:
                staleness = int(report.metrics["staleness"])
                assert 0 <= staleness <= 3
                updates[(report.agent_id, r.round - staleness)] += 1
        assert set(updates.values()) == {1}  # an update (agent, round assigned in) counts once
        store = LocalModelStore(fed.workdir / "models", "default")
        assert store.latest("fedbuff") == "fedbuff/000003"
        assert run.latest_version == "fedbuff/000003"


@pytest.fixture(params=["redis-s3", "embedded"])
def any_cluster(request, tmp_path):
    """Services on fixed ports over Redis and S3, or over the embedded defaults (test_crashes)."""
    c = Cluster(tmp_path, embedded=request.param == "embedded")
    yield c
    c.close()


def test_aggregator_killed_mid_buffer_counts_every_update_once(any_cluster):
    cluster = any_cluster
    cluster.start()
    asynchronous = round_pb2.AsynchronousSpec(buffer_size=3, concurrency=3, max_staleness=4,
                                              staleness=round_pb2.StalenessSpec(function="constant"))
    cluster.start_run("fedbuff-crash", rounds=2, asynchronous=asynchronous)
    cluster.wait_log("aggregator", "update buffered", count=1)  # the first buffer is filling

    cluster.kill("aggregator")
    cluster.start_aggregator("aggregator-2")

    assert cluster.wait_run("fedbuff-crash") == "succeeded", cluster.logs()
    rounds = cluster.state.list_rounds("fedbuff-crash")
    assert [(r.round, r.state) for r in rounds] == [(0, "committed"), (1, "committed"), (2, "committed")]
    updates = Counter()
    for r in rounds[1:]:
        assert len(r.reports) == 3, r.reports
        for report in r.reports:
            updates[(report.agent_id, r.round - int(report.metrics["staleness"]))] += 1
    assert set(updates.values()) == {1}, updates
    assert cluster.store.latest("fedbuff-crash") == "fedbuff-crash/000002"


def test_scheduler_killed_mid_buffer_is_replaced_and_the_run_finishes(any_cluster):
    cluster = any_cluster
    cluster.start()
    asynchronous = round_pb2.AsynchronousSpec(buffer_size=2, concurrency=2, max_staleness=4)
    cluster.start_run("fedbuff-resume", rounds=3, asynchronous=asynchronous)
    cluster.wait_log("scheduler", "buffer 1: ")

    cluster.kill("scheduler")
    cluster.start_scheduler("scheduler-2")

    assert cluster.wait_run("fedbuff-resume") == "succeeded", cluster.logs()
    rounds = cluster.state.list_rounds("fedbuff-resume")
    assert [(r.round, r.state) for r in rounds] == [(i, "committed") for i in range(4)]
    updates = Counter(
        (report.agent_id, r.round - int(report.metrics["staleness"])) for r in rounds[1:] for report in r.reports
    )
    assert set(updates.values()) == {1} and sum(updates.values()) == 6
    assert cluster.store.latest("fedbuff-resume") == "fedbuff-resume/000003"


def counted_once(cluster: Cluster, run_id: str, versions: int, buffer_size: int) -> None:
    """Asserts the run committed ``versions`` buffers of ``buffer_size`` updates each, every
    update (agent, round it was assigned in) counted once, the last version the latest."""
    rounds = cluster.state.list_rounds(run_id)
    assert [(r.round, r.state) for r in rounds] == [(i, "committed") for i in range(versions + 1)]
    updates = Counter(
        (report.agent_id, r.round - int(report.metrics["staleness"])) for r in rounds[1:] for report in r.reports
    )
    assert all(len(r.reports) == buffer_size for r in rounds[1:]), [r.reports for r in rounds]
    assert set(updates.values()) == {1}, updates
    assert cluster.store.latest(run_id) == f"{run_id}/{versions:06d}"


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def proxied_cluster(tmp_path):
    c = Cluster(tmp_path, via_proxy=True)
    yield c
    c.close()


def test_redis_restarted_mid_buffer_the_run_goes_on_counting_every_update_once(cluster):
    cluster.start()
    asynchronous = round_pb2.AsynchronousSpec(buffer_size=2, concurrency=3, max_staleness=4)
    cluster.start_run("fedbuff-redis", rounds=3, asynchronous=asynchronous)
    cluster.wait_log("aggregator", "update buffered", count=1)  # the first buffer is filling

    assert cluster.redis is not None
    cluster.redis.kill()
    time.sleep(2)
    cluster.redis = RedisServer(cluster.tmp / "redis", appendonly=True, port=cluster.redis.port).start()

    assert cluster.wait_run("fedbuff-redis") == "succeeded", cluster.logs()
    counted_once(cluster, "fedbuff-redis", versions=3, buffer_size=2)
    cluster.fed.check_alive()


def test_s3_unreachable_for_10_s_mid_buffer_is_retried_and_nothing_counted_twice(proxied_cluster):
    cluster = proxied_cluster
    cluster.start()
    asynchronous = round_pb2.AsynchronousSpec(buffer_size=2, concurrency=3, max_staleness=4)
    cluster.start_run("fedbuff-s3", rounds=3, asynchronous=asynchronous)
    cluster.wait_log("aggregator", "update buffered", count=1)

    assert cluster.proxy is not None
    cluster.proxy.cut()
    seen_latest = set()
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        latest = cluster.store.latest("fedbuff-s3")
        seen_latest.add(latest)
        if latest is not None:
            cluster.store.info(latest)  # whatever LATEST names is complete
        time.sleep(0.2)
    cluster.proxy.restore()

    assert cluster.wait_run("fedbuff-s3") == "succeeded", cluster.logs()
    assert seen_latest <= {"fedbuff-s3/000000", "fedbuff-s3/000001"}
    counted_once(cluster, "fedbuff-s3", versions=3, buffer_size=2)
    assert cluster.store.versions("fedbuff-s3") == [f"fedbuff-s3/{i:06d}" for i in range(4)]
    assert "model store unreachable" in (cluster.fed.workdir / "aggregator.log").read_text()
