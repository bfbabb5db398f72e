"""The simulated agent that tests and benchmarks share (fedstream_testing.sim_agent), against a
real scheduler and aggregator: it stops work no longer needed without an error, when a heartbeat
reply says its over-selected round closed or when its upload is refused as late, and takes part
in asynchronous runs, uploading changes from its base."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from fedstream.grpcutil import channel
from fedstream.rounds import Assignment, RoundKind, TrainingConfig
from fedstream.state import MemoryStateStore
from fedstream.v1 import aggregator_pb2_grpc, round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.sim_agent import SimAgent, add_constant
from fedstream_testing.support import LoopThread, plan, upload, wait_terminal, wait_until


@pytest.fixture
def scheduler(aggregator) -> Iterator[SchedulerServer]:
    loop = LoopThread()
    settings = SchedulerSettings(
        aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2, heartbeat_ttl_s=2.0,
    )

    async def build() -> SchedulerServer:
        service = SchedulerService(MemoryStateStore("t1"), AggregatorClient(settings.aggregator_endpoint), settings)
        return await build_server(service, "127.0.0.1", 0)

    server = loop.run(build())
    yield server
    loop.run(server.stop(0))
    loop.close()


@pytest.fixture
def agents() -> Iterator[list[SimAgent]]:
    started: list[SimAgent] = []
    yield started
    for a in started:
        a.stop()


def run_to_end(scheduler: SchedulerServer, spec: scheduler_pb2.RunSpec, run_id: str) -> scheduler_pb2.Run:
    runs = scheduler_pb2_grpc.RunServiceStub(channel(f"127.0.0.1:{scheduler.port}"))
    runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id), timeout=5)
    events = list(runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=90))
    return events[-1]


def test_a_slow_agent_stops_quietly_when_a_heartbeat_says_its_round_closed(scheduler, agents):
    endpoint = f"127.0.0.1:{scheduler.port}"
    slow = SimAgent("slow", endpoint, work_s=60)
    agents += [SimAgent("a0", endpoint).start(), SimAgent("a1", endpoint).start(), slow.start()]
    spec = scheduler_pb2.RunSpec(task="digits", rounds=1, min_agents=3, round_timeout_s=60, wait_for_agents_s=10,
                                 target_updates=2, training=round_pb2.TrainingConfig(seed=1))

    run = run_to_end(scheduler, spec, "over")
    wait_until(lambda: slow.not_needed, timeout=15, what="the slow agent stopped")  # long before its 60 s

    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    assert sorted(r.agent_id for r in run.rounds[1].reports) == ["a0", "a1"]
    assert slow.not_needed == [("over", 1, "heartbeat")] and ("over", 1) not in slow.done
    assert all(a.errors == [] for a in agents), [a.errors for a in agents]


def test_an_upload_refused_as_late_is_work_not_needed_not_an_error(aggregator, agg_channel, model_store):
    store_model(model_store, "late/000000", random_model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(plan("late", 1, ["a", "b"], base="late/000000", min_updates=1, target_updates=1), timeout=5)
    upload(agg_channel, "a", random_model(1), run_id="late", round_=1)
    wait_terminal(control, "late", 1)
    sim = SimAgent("b", "127.0.0.1:1")
    endpoint = f"127.0.0.1:{aggregator.port}"

    sim._handle(Assignment("late", 1, RoundKind.TRAIN, "digits", "late/000000", endpoint, endpoint,
                           TrainingConfig(), time.time() + 30))
    sim.stop()

    assert sim.not_needed == [("late", 1, "refused")] and sim.errors == [] and sim.done == []


def test_sim_agents_take_part_in_an_asynchronous_run_uploading_changes(scheduler, agents, model_store):
    endpoint = f"127.0.0.1:{scheduler.port}"
    constants = {"a0": 1.0, "a1": 2.0, "a2": 4.0}
    agents += [SimAgent(name, endpoint, update=add_constant(c)).start() for name, c in constants.items()]
    spec = scheduler_pb2.RunSpec(
        task="digits", rounds=3, min_agents=3, round_timeout_s=60, wait_for_agents_s=10,
        training=round_pb2.TrainingConfig(seed=1),
        asynchronous=round_pb2.AsynchronousSpec(buffer_size=2, concurrency=3, max_staleness=4,
                                                staleness=round_pb2.StalenessSpec(function="constant")),
    )

    run = run_to_end(scheduler, spec, "fedbuff-sim")

    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    assert all(a.errors == [] for a in agents), [a.errors for a in agents]
    # Each version adds the mean change of its buffer's updates (equal weights): the constants.
    added = sum(np.mean([constants[r.agent_id] for r in rnd.reports]) for rnd in run.rounds[1:])
    with model_store.open("fedbuff-sim/000000") as v0, model_store.open("fedbuff-sim/000003") as v3:
        t = v0.layout.spec("conv.bias")
        before = np.frombuffer(v0.read_at(t.offset, t.nbytes), np.float32)
        after = np.frombuffer(v3.read_at(t.offset, t.nbytes), np.float32)
    np.testing.assert_allclose(after - before, added, rtol=1e-5)
