"""The scheduler's gRPC messages fuzzed: hypothesis sends registrations, heartbeats and run specs
to a real scheduler server (with a real aggregator) on loopback. After each input the server
answers health SERVING, a refused input changed no state, and an accepted one is whole; at the
end a normal run still commits its rounds."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.sim_agent import SimAgent
from fedstream_testing.support import LoopThread

HEARTBEAT_TTL_S = 2.0
# What a refused input may answer: never INTERNAL, UNKNOWN or UNAVAILABLE.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Scheduler:
    server: SchedulerServer
    service: SchedulerService
    agents: scheduler_pb2_grpc.AgentServiceStub
    runs: scheduler_pb2_grpc.RunServiceStub
    health: health_pb2_grpc.HealthStub

    def snapshot(self) -> tuple[list[object], list[object]]:
        return self.service.state.list_agents(), self.service.state.list_runs()

    def serving(self) -> bool:
        answer = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def scheduler(aggregator) -> Iterator[Scheduler]:
    loop = LoopThread()
    settings_ = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                  heartbeat_ttl_s=HEARTBEAT_TTL_S)
    holder: dict[str, SchedulerService] = {}

    async def build() -> SchedulerServer:
        holder["service"] = SchedulerService(MemoryStateStore("t1"), AggregatorClient(settings_.aggregator_endpoint),
                                             settings_)
        return await build_server(holder["service"], "127.0.0.1", 0)

    server = loop.run(build())
    ch = channel(f"127.0.0.1:{server.port}")
    yield Scheduler(server, holder["service"], scheduler_pb2_grpc.AgentServiceStub(ch),
                    scheduler_pb2_grpc.RunServiceStub(ch), health_pb2_grpc.HealthStub(ch))
    ch.close()
    loop.run(server.stop(0))
    loop.close()


def call(method, request) -> tuple[object | None, grpc.StatusCode]:
    """The answer and OK, or None and the refusal's status (anything but a refusal fails)."""
    try:
        return method(request, timeout=10), grpc.StatusCode.OK
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    assert code in REFUSALS, f"{code}: {details} for {request!r}"
    assert details, f"{code} without a message for {request!r}"
    return None, code


texts = st.text(max_size=80) | st.sampled_from(["", "a", "a\n", " a", "a" * 64, "a" * 300, "../x", "é"])
# Half of the floats from the edges: non-finite, huge, tiny, negative.
floats = st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -1.0, 0.0, 1e-9, 3600.0]) | st.floats()
uint32s = st.integers(0, 2**32 - 1)


def near(baseline: dict[str, object], fuzzed: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[dict[str, object]]:
    """A valid message's fields with one of them, or several, replaced by fuzzed values, so that
    each field's checks are reached, not only the first one a random message fails."""
    one = st.sampled_from(sorted(fuzzed)).flatmap(lambda name: fuzzed[name].map(lambda v: {name: v}))
    return (one | st.fixed_dictionaries({}, optional=fuzzed)).map(lambda changed: {**baseline, **changed})


agent_infos = near(
    {"agent_id": "fuzzed-agent", "tasks": ["digits"]},
    {"agent_id": texts, "labels": st.dictionaries(texts, texts, max_size=20), "tasks": st.lists(texts, max_size=20),
     "capabilities": st.builds(scheduler_pb2.Capabilities, device=texts, cpu_count=uint32s,
                               memory_bytes=st.integers(0, 2**64 - 1))},
).map(lambda fields: scheduler_pb2.AgentInfo(**fields))
VALID_SPEC = {"task": "digits", "rounds": 1, "min_agents": 1, "round_timeout_s": 20.0, "wait_for_agents_s": 600.0}
run_specs = near(VALID_SPEC, {
    "task": texts, "rounds": uint32s, "min_agents": uint32s, "max_agents": uint32s, "round_timeout_s": floats,
    "min_updates": uint32s, "initial_version": texts, "wait_for_agents_s": floats, "evaluate_every": uint32s,
    "evaluate_only": st.booleans(), "fraction": floats,
    "training": st.builds(round_pb2.TrainingConfig, local_epochs=uint32s, batch_size=uint32s,
                          learning_rate=floats, proximal_mu=floats, compression=texts),
    "strategy": st.builds(round_pb2.StrategySpec, name=texts | st.sampled_from(["fedavg", "fedprox", "fedpav"])),
}).map(lambda fields: scheduler_pb2.RunSpec(**fields))


def register(scheduler: Scheduler, info: scheduler_pb2.AgentInfo) -> None:
    before = scheduler.snapshot()
    answer, code = call(scheduler.agents.Register, scheduler_pb2.RegisterRequest(agent=info))
    assert scheduler.serving()
    if code != grpc.StatusCode.OK:
        assert scheduler.snapshot() == before
        return
    assert answer.heartbeat_interval_s > 0
    record = scheduler.service.state.get_agent(info.agent_id)
    assert record.labels == dict(info.labels) and record.tasks == list(info.tasks)


def heartbeat(scheduler: Scheduler, agent_id: str, register_first: bool) -> None:
    if register_first:
        call(scheduler.agents.Register, scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id=agent_id)))
    before = scheduler.snapshot()
    _, code = call(scheduler.agents.Heartbeat, scheduler_pb2.HeartbeatRequest(agent_id=agent_id))
    assert scheduler.serving()
    if code != grpc.StatusCode.OK:
        assert scheduler.snapshot() == before


def start_run(scheduler: Scheduler, spec: scheduler_pb2.RunSpec, run_id: str) -> None:
    before = scheduler.snapshot()
    answer, code = call(scheduler.runs.StartRun, scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id))
    assert scheduler.serving()
    if code != grpc.StatusCode.OK:
        assert scheduler.snapshot() == before
        return
    # Accepted: every number it holds is finite, and it can be read and cancelled by its id.
    numbers = [spec.round_timeout_s, spec.wait_for_agents_s, spec.fraction, spec.training.learning_rate,
               spec.training.proximal_mu]
    assert all(math.isfinite(x) for x in numbers), spec
    read, code = call(scheduler.runs.GetRun, scheduler_pb2.GetRunRequest(run_id=answer.run_id))
    assert code == grpc.StatusCode.OK and read.run_id == answer.run_id
    cancelled, code = call(scheduler.runs.CancelRun, scheduler_pb2.GetRunRequest(run_id=answer.run_id))
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        # It ended first (a spec that waits 1e-9 s for agents fails at once): only a finished
        # run refuses to be cancelled.
        ended, _ = call(scheduler.runs.GetRun, scheduler_pb2.GetRunRequest(run_id=answer.run_id))
        assert ended is not None and ended.state in (scheduler_pb2.RUN_STATE_FAILED, scheduler_pb2.RUN_STATE_SUCCEEDED)
        return
    assert code == grpc.StatusCode.OK and cancelled.state == scheduler_pb2.RUN_STATE_CANCELLED


def normal_run_commits(scheduler: Scheduler) -> scheduler_pb2.Run | None:
    # Agents the fuzzing registered go stale without heartbeats; then two real ones train.
    time.sleep(HEARTBEAT_TTL_S + 0.5)
    sims = [SimAgent(f"after-{i}", f"127.0.0.1:{scheduler.server.port}").start() for i in range(2)]
    try:
        spec = scheduler_pb2.RunSpec(task="digits", rounds=1, min_agents=2, round_timeout_s=20, wait_for_agents_s=10,
                                     training=round_pb2.TrainingConfig(seed=1))
        started = scheduler.runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id="after-fuzz"), timeout=5)
        states = list(scheduler.runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=started.run_id), timeout=60))
    finally:
        for s in sims:
            s.stop()
    return states[-1] if states else None


def edge_specs() -> Iterator[scheduler_pb2.RunSpec]:
    """Every float field of a valid spec at each edge, always tried (drawn, they come by chance)."""
    for value in (math.inf, -math.inf, math.nan, 1e300, -1.0):
        for name in ("round_timeout_s", "wait_for_agents_s", "fraction"):
            yield scheduler_pb2.RunSpec(**{**VALID_SPEC, name: value})
        for name in ("learning_rate", "proximal_mu"):
            yield scheduler_pb2.RunSpec(**VALID_SPEC, training=round_pb2.TrainingConfig(**{name: value}))


def test_fuzzed_messages_leave_the_scheduler_serving_and_a_run_commits(scheduler):
    for spec in edge_specs():
        start_run(scheduler, spec, "")
    FUZZ(given(info=agent_infos)(lambda info: register(scheduler, info)))()
    FUZZ(given(agent_id=texts, register_first=st.booleans())(
        lambda agent_id, register_first: heartbeat(scheduler, agent_id, register_first)))()
    FUZZ(given(spec=run_specs, run_id=st.just("") | texts)(lambda spec, run_id: start_run(scheduler, spec, run_id)))()
    run = normal_run_commits(scheduler)
    assert run is not None and run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run
    assert [r.state for r in run.rounds] == [round_pb2.ROUND_STATE_COMMITTED] * 2
