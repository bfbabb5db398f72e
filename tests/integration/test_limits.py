"""Per-agent limits on real servers: each refuses (or slows) what it should, counts in
fedstream_limit_hits_total, changes nothing else and leaves other agents alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from fedstream.errors import ResourceExhausted
from fedstream.grpcutil import channel
from fedstream.rounds import Assignment, RoundKind, TrainingConfig
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.tensors import Layout
from fedstream.transfer import upload_call
from fedstream.v1 import aggregator_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer
from fedstream_scheduler.server import build_server as build_scheduler
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerLimits, SchedulerSettings
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import LoopThread, plan, wait_terminal, wait_until
from fedstream_testing.support import upload as upload_model

RUN = "lim"
# This module's uploads: its run, round 0 unless told, 1 KiB chunks.
upload = partial(upload_model, run_id=RUN, round_=0, chunk_bytes=1024)


def hits(tenant: str, service: str, limit: str) -> float:
    return REGISTRY.get_sample_value("fedstream_limit_hits_total",
                                     {"tenant": tenant, "service": service, "limit": limit}) or 0.0


def start_aggregator(tmp_path: Path, tenant: str, **limits) -> tuple[AggregatorServer, LocalModelStore]:
    store = LocalModelStore(tmp_path / "models", tenant)
    service = AggregatorService(MemoryStateStore(tenant), store, tmp_path / "spool", chunk_bytes=1024)
    return build_server(service, "127.0.0.1", 0, max_workers=16, limits=AggregatorLimits(**limits)), store


@pytest.fixture
def agg_factory(tmp_path: Path) -> Iterator:
    servers = []

    def make(tenant: str, **limits):
        server, store = start_aggregator(tmp_path / tenant, tenant, **limits)
        servers.append(server)
        return server, store, channel(f"127.0.0.1:{server.port}")

    yield make
    for s in servers:
        s.stop(0)


def test_a_training_update_may_declare_little_more_than_its_model(agg_factory):
    server, store, ch = agg_factory("lim-follow")
    base = random_model(0, scale=4)
    store_model(store, f"{RUN}/000000", base)
    pb_grpc.AggregatorControlStub(ch).OpenRound(plan(RUN, 1, ["a"], base=f"{RUN}/000000"), timeout=5)
    model_bytes = layout_of(base).total_bytes
    # A 5 GiB tensor in the header only: refused before a chunk, not once the spool is allocated.
    huge = Layout.build([("w", "bfloat16", (5 << 29,))])
    header = aggregator_pb2.UploadUpdateRequest(header=aggregator_pb2.UpdateHeader(
        run_id=RUN, round=1, agent_id="a", layout=huge.to_proto(), num_examples=1))

    with pytest.raises(grpc.RpcError) as e:
        upload_call(ch)(iter([header]), timeout=10)

    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"declares {5 << 30} bytes" in e.value.details() and f"its model's {model_bytes} bytes" in e.value.details()
    assert hits("lim-follow", "aggregator", "max_update_bytes") == 1
    upload(ch, "a", base, round_=1)  # the model's own size goes through
    assert list(server.service.state.get_aggregation(RUN, 1).reports) == ["a"]


def test_an_update_larger_than_allowed_is_refused_from_its_header(agg_factory):
    model = random_model(0, scale=4)
    size = layout_of(model).total_bytes
    server, _, ch = agg_factory("lim-size", max_update_bytes=size - 1)
    control = pb_grpc.AggregatorControlStub(ch)
    control.OpenRound(plan(RUN, 0, ["big", "small"], kind="init", min_updates=1, timeout=2), timeout=5)

    with pytest.raises(grpc.RpcError) as e:
        upload(ch, "big", model)

    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and str(size) in e.value.details()
    assert hits("lim-size", "aggregator", "max_update_bytes") == 1
    # Refused from the header: not one chunk was taken in.
    assert not REGISTRY.get_sample_value("fedstream_update_chunks_received_total", {"tenant": "lim-size"})
    assert server.service.state.get_aggregation(RUN, 0).reports == {}
    small = random_model(1)
    assert upload(ch, "small", small).bytes_received == layout_of(small).total_bytes
    assert [r.agent_id for r in wait_terminal(control, RUN, 0).reports] == ["small"]


def test_a_fast_agent_is_slowed_to_its_chunk_rate_not_refused(agg_factory):
    model = random_model(0, scale=16)
    chunks = -(-layout_of(model).total_bytes // 256)
    _, _, ch = agg_factory("lim-rate", chunks_per_s=max(1.0, chunks / 2))
    control = pb_grpc.AggregatorControlStub(ch)
    control.OpenRound(plan(RUN, 0, ["fast"], kind="init"), timeout=5)

    reply = upload(ch, "fast", model, chunk_bytes=256)

    assert chunks > 8 and reply.bytes_received == layout_of(model).total_bytes
    assert hits("lim-rate", "aggregator", "chunks_per_s") > 0
    assert wait_terminal(control, RUN, 0).reports[0].agent_id == "fast"


def test_an_agent_cannot_hold_more_streams_than_allowed(agg_factory):
    model = random_model(0, scale=4)
    server, store, ch = agg_factory("lim-streams", streams_per_agent=1)
    store_model(store, f"{RUN}/000000", model)
    control = pb_grpc.AggregatorControlStub(ch)
    control.OpenRound(plan(RUN, 1, ["site"], base=f"{RUN}/000000"), timeout=5)
    other = channel(f"127.0.0.1:{server.port}")

    release = threading.Event()
    held = upload_call(ch).future(_held_upload(model, release), timeout=30)
    wait_until(lambda: server.slots.open("site") == 1)
    with pytest.raises(grpc.RpcError) as e:
        upload(other, "site", model, round_=1)

    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 1" in e.value.details()
    assert hits("lim-streams", "aggregator", "streams_per_agent") == 1
    held.cancel()
    release.set()
    wait_until(lambda: server.slots.open("site") == 0)
    assert not upload(other, "site", model, round_=1).duplicate  # the slot is free again


def _held_upload(model, release: threading.Event, agent: str = "site"):
    """An upload that sends its header and then waits, holding its stream open."""
    from fedstream.transfer import update_requests

    layout = layout_of(model)
    requests = update_requests(run_id=RUN, round_=1, agent_id=agent, layout=layout,
                               buffers=buffers_of(layout, model), num_examples=5, metrics={})
    yield next(requests)
    release.wait(30)


# The scheduler's limits.

@pytest.fixture
def scheduler_factory(aggregator) -> Iterator:
    loop = LoopThread()
    servers: list[SchedulerServer] = []

    def make(tenant: str, **limits) -> tuple[SchedulerServer, scheduler_pb2_grpc.AgentServiceStub]:
        settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=1.0,
                                     limits=SchedulerLimits(**limits))

        async def build() -> SchedulerServer:
            service = SchedulerService(MemoryStateStore(tenant), AggregatorClient(settings.aggregator_endpoint), settings)
            return await build_server_plain(service)

        server = loop.run(build())
        servers.append(server)
        return server, scheduler_pb2_grpc.AgentServiceStub(channel(f"127.0.0.1:{server.port}"))

    yield make
    for s in servers:
        loop.run(s.stop(0))
    loop.close()


async def build_server_plain(service: SchedulerService) -> SchedulerServer:
    return await build_scheduler(service, "127.0.0.1", 0)


def register(stub, agent_id: str) -> None:
    stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id=agent_id)), timeout=5)


def test_registrations_beyond_an_agents_rate_are_refused_others_unaffected(scheduler_factory):
    server, stub = scheduler_factory("lim-reg", registrations_per_min=1)
    for _ in range(10):  # the burst
        register(stub, "noisy")

    with pytest.raises(grpc.RpcError) as e:
        register(stub, "noisy")
    register(stub, "quiet")

    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "noisy" in e.value.details()
    assert hits("lim-reg", "scheduler", "registrations_per_min") == 1
    assert {a.agent_id for a in server.service.state.list_agents()} == {"noisy", "quiet"}


def test_heartbeats_beyond_an_agents_rate_are_refused(scheduler_factory):
    server, stub = scheduler_factory("lim-hb", heartbeats_per_interval=0.01)
    register(stub, "chatty")
    for _ in range(10):
        stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="chatty"), timeout=5)
    before = server.service.state.get_agent("chatty").last_heartbeat_unix

    with pytest.raises(grpc.RpcError) as e:
        stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="chatty"), timeout=5)

    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hits("lim-hb", "scheduler", "heartbeats_per_interval") == 1
    assert server.service.state.get_agent("chatty").last_heartbeat_unix == before


def test_an_agent_that_falls_behind_its_stream_is_cut_off_and_sent_its_assignments_again():
    async def scenario() -> tuple[str, list[int]]:
        settings = SchedulerSettings(heartbeat_interval_s=60, limits=SchedulerLimits(assignment_queue=1))
        service = SchedulerService(MemoryStateStore("lim-queue"), AggregatorClient("127.0.0.1:1"), settings)
        from fedstream.state import AgentRecord

        agents = service.agents
        agents.register(AgentRecord("slow"))
        events = {r: Assignment("r", r, RoundKind.TRAIN, "", "", "", "", TrainingConfig(), 0.0) for r in (1, 2)}
        for r, ev in events.items():  # two rounds waiting for it: more than its queue holds
            agents.publish(("r", r), {"slow": ev})
        overflow = ""
        try:
            async for _ in agents.assignments("slow"):
                pass
        except ResourceExhausted as e:
            overflow = type(e).__name__
        agents.withdraw(("r", 1))  # round 1 finished meanwhile: only round 2 is re-sent
        got = []
        stream = agents.assignments("slow")
        got.append((await stream.__anext__()).round)
        await stream.aclose()
        await service.aggregator.close()
        return overflow, got

    overflow, got = asyncio.run(scenario())

    assert overflow == "ResourceExhausted"
    assert got == [2]
    assert hits("lim-queue", "scheduler", "assignment_queue") == 1


def test_calls_beyond_the_servers_concurrency_are_refused_not_queued(tmp_path):
    store = LocalModelStore(tmp_path / "models", "lim-rpcs")
    service = AggregatorService(MemoryStateStore("lim-rpcs"), store, tmp_path / "spool", chunk_bytes=1024)
    server = build_server(service, "127.0.0.1", 0, max_workers=8, max_concurrent_rpcs=2)
    ch = channel(f"127.0.0.1:{server.port}")
    model = random_model(0)
    store_model(store, f"{RUN}/000000", model)
    pb_grpc.AggregatorControlStub(ch).OpenRound(plan(RUN, 1, ["a", "b", "c"], base=f"{RUN}/000000"), timeout=5)
    release = threading.Event()
    try:
        held = [upload_call(ch).future(_held_upload(model, release, agent), timeout=30) for agent in ("a", "b")]
        wait_until(lambda: server.slots.open("a") == 1 and server.slots.open("b") == 1)

        with pytest.raises(grpc.RpcError) as e:
            upload(channel(f"127.0.0.1:{server.port}"), "c", model, round_=1)

        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # gRPC refuses before fedstream's code runs: saturation shows as calls in progress.
        assert REGISTRY.get_sample_value("fedstream_grpc_max_concurrent_calls") == 2
        assert REGISTRY.get_sample_value("fedstream_grpc_calls_in_progress") >= 2
        release.set()
        for h in held:
            h.cancel()
        wait_until(lambda: server.slots.open("a") == 0 and server.slots.open("b") == 0)
        assert not upload(ch, "c", model, round_=1).duplicate
    finally:
        release.set()
        server.stop(0)
