"""Crash safety on Redis and S3, and on the embedded defaults (one SQLite state file and a
local model directory), with the services as separate processes killed by SIGKILL: no crash,
restart or outage loses a committed model or a completed update."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fedstream.config import S3Settings
from fedstream.state import SQLiteStateStore, StateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore, ModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.tensors import FlatBuffer
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.local import LocalFederation
from fedstream_testing.servers import RedisServer, S3Server, TcpProxy, free_port

BUCKET = "crash"


class Cluster:
    """The services on fixed loopback ports, so that a restarted one is found where the old one
    was, over Redis (append-only) and an S3 server (optionally behind a proxy that can be cut),
    or, ``embedded``, over the defaults: one SQLite file and one model directory for all."""

    def __init__(self, tmp_path: Path, via_proxy: bool = False, embedded: bool = False) -> None:
        self.tmp = tmp_path
        self.fed = LocalFederation(tmp_path / "logs")
        self.agg_addr = f"127.0.0.1:{free_port()}"
        self.sched_addr = f"127.0.0.1:{free_port()}"
        self.redis: RedisServer | None = None
        self.s3: S3Server | None = None
        self.proxy: TcpProxy | None = None
        self.state: StateStore
        self.store: ModelStore
        if embedded:  # LocalFederation's own settings: its state file and model directory
            self.backends: dict[str, str] = {}
            self.scheduler_backends: dict[str, str] = {}
            self.state = SQLiteStateStore(self.fed.state_file, "default")
            self.store = LocalModelStore(self.fed.workdir / "models", "default")
            return
        self.redis = RedisServer(tmp_path / "redis", appendonly=True).start()
        self.s3 = S3Server().start()
        self.proxy = TcpProxy(self.s3.port) if via_proxy else None
        s3_port = self.proxy.port if self.proxy else self.s3.port
        self.scheduler_backends = {"STATE__BACKEND": "redis", "STATE__REDIS__URL": self.redis.url}
        self.backends = {
            **self.scheduler_backends,
            "STORE__BACKEND": "s3",
            "STORE__S3__ENDPOINT": f"127.0.0.1:{s3_port}",
            "STORE__S3__ACCESS_KEY": "test",
            "STORE__S3__SECRET_KEY": "test",
            "STORE__S3__BUCKET": BUCKET,
            "STORE__PATH": str(tmp_path / "staging"),
        }
        direct = S3Settings(endpoint=self.s3.endpoint, access_key="test", secret_key="test", bucket=BUCKET)
        self.store = S3ModelStore(make_client(direct), direct, tmp_path / "direct", "default")
        self.state = RedisStateStore(connect(self.redis.url), "default")

    def start_aggregator(self, name: str = "aggregator") -> None:
        self.fed.start_aggregator({**self.backends, "GRPC__PORT": self.agg_addr.rsplit(":", 1)[1]}, name=name)

    def start_scheduler(self, name: str = "scheduler") -> None:
        self.fed.start_scheduler(self.agg_addr, {
            **self.scheduler_backends,
            "GRPC__PORT": self.sched_addr.rsplit(":", 1)[1],
            "HEARTBEAT_INTERVAL_S": "0.5",
            "RUN_LEASE_TTL_S": "2",
        }, name=name)

    def start_agents(self, n: int = 3) -> None:
        for i in range(n):
            self.fed.start_agent(f"site-{i}", self.sched_addr, i, n, {"DEVICE": "cpu", "CPU_THREADS": "1"})

    def start(self, agents: int = 3) -> Cluster:
        self.start_aggregator()
        self.start_scheduler()
        self.start_agents(agents)
        return self

    def start_run(self, run_id: str, **spec: object) -> None:
        fields = dict(task="digits", rounds=2, min_agents=3, round_timeout_s=90, wait_for_agents_s=60,
                      training=round_pb2.TrainingConfig(local_epochs=1, seed=7))
        fields.update(spec)
        stub = scheduler_pb2_grpc.RunServiceStub(self.fed.channel(self.sched_addr))
        stub.StartRun(scheduler_pb2.StartRunRequest(spec=scheduler_pb2.RunSpec(**fields), run_id=run_id), timeout=10)

    def wait_run(self, run_id: str, timeout: float = 180) -> str:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            state = self.state.get_run(run_id).state
            if state != "running":
                return state
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} still running after {timeout} s:\n{self.logs()}")

    def wait_log(self, name: str, text: str, count: int = 1, timeout: float = 120) -> None:
        path = self.fed.workdir / f"{name}.log"
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if path.exists() and path.read_text(errors="replace").count(text) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.logs()}")

    def kill(self, name: str) -> None:
        for n, proc in self.fed.procs:
            if n == name and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

    def model(self, version: str) -> dict[str, np.ndarray]:
        with self.store.open(version) as reader:
            buf = FlatBuffer(reader.layout)
            for chunk in reader.iter_chunks():
                buf.write(chunk.offset, chunk.data)
        return buf.arrays()

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.fed.tail(n, 15)}" for n, _ in self.fed.procs)

    def close(self) -> None:
        self.fed.stop()
        if self.proxy:
            self.proxy.close()
        if self.s3:
            self.s3.stop()
        if self.redis:
            self.redis.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture(params=["redis-s3", "embedded"])
def any_cluster(request, tmp_path):
    """Both a cluster on Redis and S3 and one on the embedded defaults (SQLite, local directory)."""
    c = Cluster(tmp_path, embedded=request.param == "embedded")
    yield c
    c.close()


@pytest.fixture
def proxied_cluster(tmp_path):
    c = Cluster(tmp_path, via_proxy=True)
    yield c
    c.close()


def test_aggregator_killed_mid_uploads_counts_every_update_once(any_cluster):
    cluster = any_cluster
    cluster.start()
    cluster.start_run("crash", rounds=1)
    cluster.wait_log("aggregator", "update folded", count=2)  # init, then the first of round 1

    cluster.kill("aggregator")
    cluster.start_aggregator("aggregator-2")

    assert cluster.wait_run("crash") == "succeeded", cluster.logs()
    round1 = cluster.state.get_round("crash", 1)
    assert sorted(r.agent_id for r in round1.reports) == ["site-0", "site-1", "site-2"]
    assert round1.stragglers == []
    # The same federation without a crash: agents train deterministically, so the updates
    # are the same and so must the model be (folding order aside).
    cluster.start_run("clean", rounds=1)
    assert cluster.wait_run("clean") == "succeeded"
    crashed, clean = cluster.model("crash/000001"), cluster.model("clean/000001")
    for name, values in clean.items():
        if values.dtype == np.float32:
            np.testing.assert_allclose(crashed[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(crashed[name], values)


def test_scheduler_killed_mid_round_is_replaced_and_the_run_finishes(any_cluster):
    cluster = any_cluster
    cluster.start()
    cluster.start_run("resume", rounds=2)
    cluster.wait_log("scheduler", "round 1 (train) assigned")

    cluster.kill("scheduler")
    cluster.start_scheduler("scheduler-2")

    assert cluster.wait_run("resume") == "succeeded", cluster.logs()
    rounds = cluster.state.list_rounds("resume")
    assert [(r.round, r.state) for r in rounds] == [(0, "committed"), (1, "committed"), (2, "committed")]
    assert cluster.store.latest("resume") == "resume/000002"


def test_agent_killed_in_its_round_leaves_the_others_to_commit_at_the_deadline(cluster):
    cluster.start()
    cluster.start_run("lost-agent", rounds=1, min_updates=2, round_timeout_s=12,
                      training=round_pb2.TrainingConfig(local_epochs=3, seed=7))
    cluster.wait_log("site-2", "downloaded lost-agent/000000")

    cluster.kill("site-2")

    assert cluster.wait_run("lost-agent") == "succeeded", cluster.logs()
    round1 = cluster.state.get_round("lost-agent", 1)
    assert round1.state == "committed"
    assert round1.stragglers == ["site-2"]
    assert sorted(r.agent_id for r in round1.reports) == ["site-0", "site-1"]


def test_redis_restarted_mid_round_the_services_reconnect(cluster):
    cluster.start()
    cluster.start_run("redis-restart", rounds=2)
    cluster.wait_log("scheduler", "round 1 (train) assigned")

    cluster.redis.kill()
    time.sleep(2)
    cluster.redis = RedisServer(cluster.tmp / "redis", appendonly=True, port=cluster.redis.port).start()

    assert cluster.wait_run("redis-restart") == "succeeded", cluster.logs()
    assert [r.state for r in cluster.state.list_rounds("redis-restart")] == ["committed"] * 3
    cluster.fed.check_alive()


def test_s3_unreachable_for_10_s_mid_round_is_retried_and_latest_never_half_written(proxied_cluster):
    cluster = proxied_cluster
    cluster.start()
    cluster.start_run("outage", rounds=1)
    cluster.wait_log("aggregator", "update folded", count=3)  # init, then two of round 1

    cluster.proxy.cut()
    seen_latest = set()
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        latest = cluster.store.latest("outage")
        seen_latest.add(latest)
        if latest is not None:
            cluster.store.info(latest)  # whatever LATEST names is complete
        time.sleep(0.2)
    cluster.proxy.restore()

    assert cluster.wait_run("outage") == "succeeded", cluster.logs()
    assert seen_latest == {"outage/000000"}
    assert cluster.store.latest("outage") == "outage/000001"
    assert cluster.store.versions("outage") == ["outage/000000", "outage/000001"]
    assert "model store unreachable" in (cluster.fed.workdir / "aggregator.log").read_text()
