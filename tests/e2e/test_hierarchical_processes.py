"""Hierarchical aggregation end to end: services as processes on one Redis and one S3 store, a
root aggregator with two leaf aggregators against a single aggregator, same agents, same
seeds: the same models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fedstream.config import S3Settings
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.tensors import FlatBuffer
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.local import LocalFederation
from fedstream_testing.servers import RedisServer, S3Server

AGENTS = 4


@pytest.fixture
def backends(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    s3 = S3Server().start()
    yield redis, s3
    s3.stop()
    redis.stop()


def federation(workdir: Path, redis: RedisServer, s3: S3Server, leaves: int, run_id: str) -> dict[str, object]:
    """Runs a two-round federation of AGENTS digits agents; returns the run's round records."""
    env = {
        "STATE__BACKEND": "redis",
        "STATE__REDIS__URL": redis.url,
        "STORE__BACKEND": "s3",
        "STORE__S3__ENDPOINT": s3.endpoint,
        "STORE__S3__ACCESS_KEY": "test",
        "STORE__S3__SECRET_KEY": "test",
        "STORE__S3__BUCKET": "tree",
        "STORE__PATH": str(workdir / "staging"),
        "LOG__LEVEL": "INFO",
    }
    state = RedisStateStore(connect(redis.url), "default")
    with LocalFederation(workdir) as fed:
        leaf_addrs = [
            fed.start_aggregator({**env, "NAME": f"l{i}", "SPOOL_DIR": str(workdir / f"spool{i}")}, name=f"leaf-{i}")
            for i in range(leaves)
        ]
        root_env = {**env, "LEAVES": json.dumps([{"endpoint": a} for a in leaf_addrs])} if leaves else env
        root = fed.start_aggregator(root_env, name="root")
        sched = fed.start_scheduler(root, {"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis.url})
        for i in range(AGENTS):
            fed.start_agent(f"site-{i}", sched, i, AGENTS, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        spec = scheduler_pb2.RunSpec(
            task="digits", rounds=2, min_agents=AGENTS, round_timeout_s=120, wait_for_agents_s=90,
            training=round_pb2.TrainingConfig(local_epochs=1, seed=11),
        )
        stub = scheduler_pb2_grpc.RunServiceStub(fed.channel(sched))
        stub.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id), timeout=10)
        give_up = time.monotonic() + 240
        while state.get_run(run_id).state == "running":
            fed.check_alive()
            assert time.monotonic() < give_up, "\n".join(fed.tail(n) for n, _ in fed.procs)
            time.sleep(0.2)
        # The root tells its leaves to finish their shares just after it commits: give it a
        # moment before the processes stop (the run may succeed first).
        journals = ["", *(f"leaf/l{i}" for i in range(leaves))]
        while any(state.list_aggregations(j) for j in journals) and time.monotonic() < give_up:
            time.sleep(0.2)
        logs = {name: (workdir / f"{name}.log").read_text() for name, _ in fed.procs}
    assert state.get_run(run_id).state == "succeeded", state.get_run(run_id).reason
    return {"rounds": state.list_rounds(run_id), "logs": logs, "state": state}


def read(store: S3ModelStore, version: str) -> dict[str, np.ndarray]:
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for chunk in reader.iter_chunks():
            buf.write(chunk.offset, chunk.data)
    return buf.arrays()


def test_two_leaves_and_a_root_give_the_model_of_a_single_aggregator(backends, tmp_path):
    redis, s3 = backends
    tree = federation(tmp_path / "tree", redis, s3, leaves=2, run_id="tree")
    flat = federation(tmp_path / "flat", redis, s3, leaves=0, run_id="flat")

    # The leaves did the folding: each took half the agents in each training round.
    logs = tree["logs"]
    assert logs["root"].count("shared among 2 leaves") == 2
    for i in range(2):
        assert logs[f"leaf-{i}"].count("update folded") == 4, logs[f"leaf-{i}"]
        assert logs[f"leaf-{i}"].count("handed to the root") == 2
    assert "update folded" in logs["root"]  # the init round only
    assert logs["root"].count("update folded") == 1
    assert flat["logs"]["root"].count("update folded") == 1 + 2 * AGENTS  # a single aggregator
    for rnd in tree["rounds"][1:]:
        assert sorted(r.agent_id for r in rnd.reports) == [f"site-{i}" for i in range(AGENTS)]
    # Every journal, root's and leaves', is closed.
    for journal in ("", "leaf/l0", "leaf/l1"):
        assert tree["state"].list_aggregations(journal) == []

    direct = S3Settings(endpoint=s3.endpoint, access_key="test", secret_key="test", bucket="tree")
    store = S3ModelStore(make_client(direct), direct, tmp_path / "direct", "default")
    for round_, tol in ((1, 1e-5), (2, 1e-4)):
        got, want = read(store, f"tree/{round_:06d}"), read(store, f"flat/{round_:06d}")
        for name, values in want.items():
            if values.dtype == np.float32:
                np.testing.assert_allclose(got[name], values, rtol=tol, atol=tol, err_msg=f"round {round_} {name}")
            else:
                np.testing.assert_array_equal(got[name], values, err_msg=name)
