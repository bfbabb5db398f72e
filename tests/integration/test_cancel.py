"""Cancel means cancel: a run cancelled mid-round commits nothing after the cancel, over a real
scheduler and a real aggregator, with uploads in flight; and the aggregator's own checks when
the scheduler never told it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel
from fedstream.rounds import RoundState, RunState
from fedstream.state import MemoryStateStore, RoundRecord, RunRecord
from fedstream.store import LocalModelStore
from fedstream.tensors import FlatBuffer
from fedstream.transfer import download_model
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc, round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_aggregator.server import AggregatorServer
from fedstream_aggregator.server import build_server as build_aggregator
from fedstream_aggregator.service import AggregatorService
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model
from fedstream_testing.sim_agent import SimAgent, add_constant
from fedstream_testing.support import LoopThread, plan, upload, upload_tensors, wait_until

RUN = "run-cancel"


class Scheduler:
    """A real scheduler's gRPC server on its own loop, over ``state``."""

    def __init__(self, state: MemoryStateStore, aggregator_port: int, *, adopt: bool = False) -> None:
        self.loop = LoopThread()
        settings = SchedulerSettings(
            aggregator_endpoint=f"127.0.0.1:{aggregator_port}", heartbeat_interval_s=0.2, heartbeat_ttl_s=2.0,
            run_lease_ttl_s=1.5,
        )

        async def build() -> SchedulerServer:
            service = SchedulerService(state, AggregatorClient(settings.aggregator_endpoint), settings)
            if adopt:
                service.start_adopting()
            return await build_server(service, "127.0.0.1", 0)

        self.server = self.loop.run(build())
        self.channel = channel(f"127.0.0.1:{self.server.port}")
        self.runs = scheduler_pb2_grpc.RunServiceStub(self.channel)
        self.agents = scheduler_pb2_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.loop.run(self.server.stop(0))
        self.loop.close()


@pytest.fixture
def scheduler(aggregator: AggregatorServer) -> Iterator[Scheduler]:
    s = Scheduler(MemoryStateStore("t1"), aggregator.port)  # a state store of its own: only AbortRound tells
    yield s
    s.close()


class Gate:
    """An update function that waits until the test opens the gate, noting that it was reached."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.open = threading.Event()

    def __call__(self, base: FlatBuffer, _a: object) -> FlatBuffer:
        self.reached.set()
        self.open.wait(30)
        return base


def run_of(s: Scheduler, run_id: str = RUN) -> scheduler_pb2.Run:
    return s.runs.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=5)


def held_upload(agg_channel: grpc.Channel, base: FlatBuffer, release: threading.Event,
                streaming: threading.Event) -> Iterator[memoryview]:
    """The base's tensors as an upload's buffers that stop after the first until ``release``."""
    for i, t in enumerate(base.layout.tensors):
        if i == 1:
            streaming.set()
            release.wait(30)
        yield memoryview(base.data)[t.offset : t.end]


def test_cancel_mid_round_with_uploads_in_flight_commits_nothing(
    scheduler: Scheduler, aggregator: AggregatorServer, agg_channel: grpc.Channel, model_store: LocalModelStore,
):
    endpoint = f"127.0.0.1:{scheduler.server.port}"
    training, streaming = Gate(), Gate()
    agents = [SimAgent("a0", endpoint, update=add_constant(1.0)).start(),
              SimAgent("a1", endpoint, update=training).start(),
              SimAgent("a2", endpoint, update=streaming).start()]
    release, upload_started = threading.Event(), threading.Event()
    outcome: list[object] = []
    try:
        spec = scheduler_pb2.RunSpec(task="digits", rounds=2, min_agents=3, round_timeout_s=60,
                                     wait_for_agents_s=20, training=round_pb2.TrainingConfig(seed=1))
        scheduler.runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=RUN), timeout=5)
        wait_until(lambda: len(run_of(scheduler).rounds) == 2 and len(run_of(scheduler).rounds[1].reports) == 1,
                   timeout=30, what="a0's update counted in round 1")
        wait_until(lambda: training.reached.is_set() and streaming.reached.is_set(), timeout=10)
        base = download_model(agg_channel, RUN, f"{RUN}/000000").buffer

        def upload_a2() -> None:
            try:
                outcome.append(upload_tensors(
                    agg_channel, "a2", base.layout, held_upload(agg_channel, base, release, upload_started),
                    run_id=RUN, round_=1, chunk_bytes=1024))
            except grpc.RpcError as e:
                outcome.append(e)

        uploader = threading.Thread(target=upload_a2)
        uploader.start()
        rnd = aggregator.service.rounds.get(RUN, 1)
        wait_until(lambda: upload_started.is_set() and "a2" in rnd.uploading, what="a2's upload streaming")

        cancelled = scheduler.runs.CancelRun(scheduler_pb2.GetRunRequest(run_id=RUN), timeout=30)

        release.set()
        uploader.join(30)
        training.open.set()  # a1 finishes training now and uploads: refused
        wait_until(lambda: any("round 1" in e for e in agents[1].errors), what="a1's refused upload")
        time.sleep(0.5)  # nothing may commit late
        heartbeat = scheduler.agents.Heartbeat(
            scheduler_pb2.HeartbeatRequest(agent_id="a1", run_id=RUN, round=1), timeout=5)
    finally:
        release.set()
        training.open.set()
        streaming.open.set()
        for a in agents:
            a.stop()

    assert cancelled.state == scheduler_pb2.RUN_STATE_CANCELLED
    assert "cancelled by plaintext/unauthenticated" in cancelled.reason
    assert [r.state for r in cancelled.rounds] == [round_pb2.ROUND_STATE_COMMITTED, round_pb2.ROUND_STATE_CANCELLED]
    assert cancelled.rounds[1].reason.startswith("run cancelled by ")
    assert cancelled.latest_version == f"{RUN}/000000"
    # Nothing committed after the cancel: the model store has the initial version only.
    assert model_store.versions(RUN) == [f"{RUN}/000000"]
    assert model_store.latest(RUN) == f"{RUN}/000000"
    # The upload streaming at the cancel was ended, the one after it refused, both saying why.
    assert isinstance(outcome[0], grpc.RpcError)
    assert outcome[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"round 1 of run '{RUN}' was cancelled" in outcome[0].details()
    assert any(f"FAILED_PRECONDITION: round 1 of run '{RUN}' was cancelled" in e for e in agents[1].errors)
    # The aggregator's round and journal say cancelled; a participant's heartbeat is told.
    assert rnd.state is RoundState.CANCELLED and sorted(rnd.reports) == ["a0"]
    assert aggregator.service.state.get_aggregation(RUN, 1).state is RoundState.CANCELLED
    assert heartbeat.round_cancelled and "cancelled by" in heartbeat.reason
    assert not scheduler.agents.Heartbeat(
        scheduler_pb2.HeartbeatRequest(agent_id="a0", run_id=RUN, round=0), timeout=5).round_cancelled


def test_abort_round_is_idempotent_and_too_late_once_committed(agg_channel: grpc.Channel,
                                                                 model_store: LocalModelStore):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(plan("r", 0, ["a"], kind="init"), timeout=5)
    upload(agg_channel, "a", random_model(1), run_id="r", round_=0)
    wait_until(lambda: model_store.latest("r") == "r/000000")
    control.OpenRound(plan("r", 1, ["a", "b"], base="r/000000"), timeout=5)
    abort = aggregator_pb2.AbortRoundRequest(run_id="r", round=1, reason="run cancelled by token/t")

    first = control.AbortRound(abort, timeout=5)
    again = control.AbortRound(abort, timeout=5)
    late = control.AbortRound(aggregator_pb2.AbortRoundRequest(run_id="r", round=0, reason="x"), timeout=5)
    with pytest.raises(grpc.RpcError) as unknown:
        control.AbortRound(aggregator_pb2.AbortRoundRequest(run_id="r", round=7), timeout=5)
    with pytest.raises(grpc.RpcError) as refused:
        upload(agg_channel, "b", random_model(1), run_id="r", round_=1)

    assert (first.state, first.reason) == (round_pb2.ROUND_STATE_CANCELLED, "run cancelled by token/t")
    assert again == first
    assert (late.state, late.version) == (round_pb2.ROUND_STATE_COMMITTED, "r/000000")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "round 1 of run 'r' was cancelled: run cancelled by token/t"
    assert model_store.versions("r") == ["r/000000"]


@pytest.fixture
def shared(tmp_path: Path, model_store: LocalModelStore) -> Iterator[tuple[MemoryStateStore, AggregatorServer]]:
    """An aggregator sharing its state store with the scheduler (as on Redis)."""
    state = MemoryStateStore("t1")
    service = AggregatorService(state, model_store, tmp_path / "spool", chunk_bytes=4096)
    server = build_aggregator(service, "127.0.0.1", 0, max_workers=8)
    yield state, server
    server.stop(0)


def test_a_cancel_the_aggregator_never_heard_of_still_commits_nothing(shared, model_store: LocalModelStore):
    state, server = shared
    with channel(f"127.0.0.1:{server.port}") as ch:
        control = aggregator_pb2_grpc.AggregatorControlStub(ch)
        control.OpenRound(plan("r", 0, ["a"], kind="init"), timeout=5)
        upload(ch, "a", random_model(1), run_id="r", round_=0)
        wait_until(lambda: model_store.latest("r") == "r/000000")
        control.OpenRound(plan("r", 1, ["a", "b"], base="r/000000"), timeout=5)
        model = {k: v for k, v in random_model(1).items()}
        # The scheduler records the cancel, then dies before its AbortRound.
        state.create_run(RunRecord("r", {}, state=RunState.CANCELLED, reason="cancelled by token/t"))

        upload(ch, "a", model, run_id="r", round_=1)
        upload(ch, "b", model, run_id="r", round_=1)  # the last: the round closes and would commit
        rnd = server.service.rounds.get("r", 1)
        wait_until(rnd.terminal, what="the round ended")

    assert rnd.state is RoundState.CANCELLED and "cancelled by token/t" in rnd.reason
    assert state.get_aggregation("r", 1).state is RoundState.CANCELLED
    assert model_store.versions("r") == ["r/000000"]


def test_a_restarted_scheduler_sends_the_abort_it_never_sent(shared, model_store: LocalModelStore):
    state, server = shared
    with channel(f"127.0.0.1:{server.port}") as ch:
        control = aggregator_pb2_grpc.AggregatorControlStub(ch)
        control.OpenRound(plan("r", 0, ["a"], kind="init"), timeout=5)
        upload(ch, "a", random_model(1), run_id="r", round_=0)
        wait_until(lambda: model_store.latest("r") == "r/000000")
        control.OpenRound(plan("r", 1, ["a", "b"], base="r/000000"), timeout=5)
    # What a scheduler that died between recording the cancel and telling the aggregator leaves.
    state.create_run(RunRecord("r", {"task": "digits"}, state=RunState.CANCELLED, reason="cancelled by token/t",
                               finished_unix=time.time()))
    state.create_round(RoundRecord("r", 1, "train", RoundState.TRAINING, ["a", "b"], "r/000000"))

    restarted = Scheduler(state, server.port, adopt=True)
    try:
        wait_until(lambda: state.get_round("r", 1).state == RoundState.CANCELLED, timeout=15,
                   what="the round recorded cancelled")
    finally:
        restarted.close()

    assert server.service.rounds.get("r", 1).state is RoundState.CANCELLED
    assert state.get_aggregation("r", 1).state is RoundState.CANCELLED
    assert model_store.versions("r") == ["r/000000"]
