"""The scheduler over real gRPC with a real aggregator and agents speaking the protocol."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from fedstream.grpcutil import channel
from fedstream.rounds import RoundKind
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.sim_agent import SimAgent, add_constant
from fedstream_testing.support import LoopThread, wait_until


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
def runs(scheduler) -> scheduler_pb2_grpc.RunServiceStub:
    return scheduler_pb2_grpc.RunServiceStub(channel(f"127.0.0.1:{scheduler.port}"))


@pytest.fixture
def agents_stub(scheduler) -> scheduler_pb2_grpc.AgentServiceStub:
    return scheduler_pb2_grpc.AgentServiceStub(channel(f"127.0.0.1:{scheduler.port}"))


def spec(**overrides) -> scheduler_pb2.RunSpec:
    fields = dict(task="digits", rounds=2, min_agents=2, round_timeout_s=20, wait_for_agents_s=10,
                  training=round_pb2.TrainingConfig(seed=1))
    fields.update(overrides)
    return scheduler_pb2.RunSpec(**fields)


def follow(runs, run_id: str) -> scheduler_pb2.Run:
    last = None
    for run in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=60):
        last = run
    return last


def test_run_goes_init_then_rounds_to_success(scheduler, runs, aggregator, model_store: LocalModelStore):
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{scheduler.port}", examples=10 * (i + 1), update=add_constant(i + 1)).start() for i in range(2)]
    try:
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(), run_id="run-1"), timeout=5)
        run = follow(runs, started.run_id)
    finally:
        for a in agents:
            a.stop()

    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    assert [(r.round, r.kind, r.state) for r in run.rounds] == [
        (0, round_pb2.ROUND_KIND_INIT, round_pb2.ROUND_STATE_COMMITTED),
        (1, round_pb2.ROUND_KIND_TRAIN, round_pb2.ROUND_STATE_COMMITTED),
        (2, round_pb2.ROUND_KIND_TRAIN, round_pb2.ROUND_STATE_COMMITTED),
    ]
    assert run.latest_version == "run-1/000002"
    assert sorted(run.rounds[1].participants) == ["a0", "a1"]
    assert sorted((r.agent_id, r.num_examples) for r in run.rounds[2].reports) == [("a0", 10), ("a1", 20)]
    assert all(a.errors == [] for a in agents)
    # Each round adds the weighted mean of the agents' constants: (1*10 + 2*20) / 30 = 5/3.
    with model_store.open("run-1/000000") as r0, model_store.open("run-1/000002") as r2:
        t = r0.layout.spec("conv.bias")
        before = np.frombuffer(r0.read_at(t.offset, t.nbytes), np.float32)
        after = np.frombuffer(r2.read_at(t.offset, t.nbytes), np.float32)
    np.testing.assert_allclose(after - before, 2 * 5 / 3, rtol=1e-5)


def test_max_agents_selects_a_subset(scheduler, runs):
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{scheduler.port}").start() for i in range(3)]
    try:
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(min_agents=3, max_agents=2, rounds=1)), timeout=5)
        run = follow(runs, started.run_id)
    finally:
        for a in agents:
            a.stop()
    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    assert len(run.rounds[1].participants) == 2


def test_run_fails_with_a_reason_when_agents_are_missing(scheduler, runs):
    started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(wait_for_agents_s=0.5)), timeout=5)
    run = follow(runs, started.run_id)
    assert run.state == scheduler_pb2.RUN_STATE_FAILED
    assert "only 0 live agents for task 'digits'" in run.reason and "no agent is live" in run.reason


def test_a_run_for_a_task_no_agent_offers_fails_naming_the_tasks_agents_offer(scheduler, runs):
    agents = [SimAgent(f"cam-{i}", f"127.0.0.1:{scheduler.port}", tasks=("fedvision", "digits")).start()
              for i in range(2)]
    try:
        wait_until(lambda: len(scheduler.service.agents.live_agents("digits")) == 2, what="two live agents")
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(task="fedreid", wait_for_agents_s=0.5)),
                                timeout=5)
        run = follow(runs, started.run_id)
    finally:
        for a in agents:
            a.stop()

    assert run.state == scheduler_pb2.RUN_STATE_FAILED
    assert "only 0 live agents for task 'fedreid'" in run.reason
    assert "live agents offer: digits (cam-0, cam-1); fedvision (cam-0, cam-1)" in run.reason


def test_stragglers_are_recorded_and_the_round_commits_with_the_minimum(scheduler, runs):
    fast = SimAgent("fast", f"127.0.0.1:{scheduler.port}").start()
    def stall(base, a):
        time.sleep(30)
        return base
    slow = SimAgent("slow", f"127.0.0.1:{scheduler.port}", update=stall).start()
    try:
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(
            rounds=1, min_updates=1, round_timeout_s=2, initial_version="")), timeout=5)
        run = follow(runs, started.run_id)
    finally:
        fast.stop()
        slow._stop.set()
    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    train = run.rounds[-1]
    assert train.state == round_pb2.ROUND_STATE_COMMITTED
    assert list(train.stragglers) == ["slow"]


def test_cancel_run(scheduler, runs):
    started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(wait_for_agents_s=30)), timeout=5)
    cancelled = runs.CancelRun(scheduler_pb2.GetRunRequest(run_id=started.run_id), timeout=5)
    assert cancelled.state == scheduler_pb2.RUN_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as e:
        runs.CancelRun(scheduler_pb2.GetRunRequest(run_id=started.run_id), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(task=""), "invalid run spec: task"),
        (dict(rounds=0), None),  # proto3 zero means unset: the default of one round applies
        (dict(round_timeout_s=-1), "invalid run spec: round_timeout_s"),
        (dict(training=round_pb2.TrainingConfig(learning_rate=-1)), "invalid run spec: training.learning_rate"),
        (dict(min_agents=1, min_updates=3), "min_updates exceeds"),
    ],
)
def test_bad_run_specs_are_refused(runs, bad, message):
    if message is None:
        assert runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(**bad)), timeout=5).spec.rounds == 1
        return
    with pytest.raises(grpc.RpcError) as e:
        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(**bad)), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def test_run_ids_are_unique_and_checked(runs):
    runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(), run_id="same"), timeout=5)
    with pytest.raises(grpc.RpcError) as e:
        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(), run_id="same"), timeout=5)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(), run_id="../x"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        runs.GetRun(scheduler_pb2.GetRunRequest(run_id="missing"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_unregistered_agents_are_refused(agents_stub):
    with pytest.raises(grpc.RpcError) as e:
        agents_stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="ghost"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        next(agents_stub.ReceiveAssignments(scheduler_pb2.ReceiveAssignmentsRequest(agent_id="ghost"), timeout=5))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        agents_stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id="")), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_strategy_reaches_the_aggregator_and_fedprox_mu_the_agents(scheduler, runs):
    from google.protobuf import struct_pb2

    params = struct_pb2.Struct()
    params.update({"mu": 0.25})
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{scheduler.port}").start() for i in range(2)]
    try:
        started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(
            rounds=1, strategy=round_pb2.StrategySpec(name="fedprox", params=params))), timeout=5)
        run = follow(runs, started.run_id)
    finally:
        for a in agents:
            a.stop()
    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    assert run.spec.strategy.name == "fedprox" and run.spec.strategy.params["mu"] == 0.25
    train = [a for agent in agents for a in agent.assignments if a.kind is RoundKind.TRAIN]
    assert train and all(a.training.proximal_mu == 0.25 for a in train)


@pytest.mark.parametrize(
    "strategy, message",
    [("fedmagic", "unknown strategy 'fedmagic'"), ("fedprox", "strategy 'fedprox': mu")],
)
def test_bad_strategies_are_refused_at_start(runs, strategy, message):
    from google.protobuf import struct_pb2

    params = struct_pb2.Struct()
    params.update({"mu": -1})
    with pytest.raises(grpc.RpcError) as e:
        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(
            strategy=round_pb2.StrategySpec(name=strategy, params=params))), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def test_under_secure_aggregation_assignments_list_the_round_s_participants(scheduler, runs):
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{scheduler.port}").start() for i in range(2)]
    started = runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec(
        rounds=1, secure_aggregation=round_pb2.SecureAggregationSpec(max_dropout=0.3))), timeout=5)

    def train() -> list:
        return [a for agent in agents for a in agent.assignments if a.kind is RoundKind.TRAIN]

    try:
        wait_until(lambda: len(train()) == 2, 30, "no training assignment")
    finally:
        runs.CancelRun(scheduler_pb2.GetRunRequest(run_id=started.run_id), timeout=5)
        for a in agents:
            a.stop()
    assert all(sorted(a.participants) == ["a0", "a1"] and a.training.secure_aggregation for a in train())
    init = [a for agent in agents for a in agent.assignments if a.kind is RoundKind.INIT]
    assert init and all(a.participants == () for a in init)
