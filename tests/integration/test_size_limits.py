"""Sizes a client controls, on real servers: each limit refuses with a message naming the limit
and the value and counts in fedstream_limit_hits_total; messages between the services never
depend on the reports of a round fitting in gRPC's 4 MiB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from fedstream.grpcutil import channel
from fedstream.rounds import RoundState
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.tensors import MAX_CHUNK_BYTES
from fedstream.transfer import download_model
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer
from fedstream_scheduler.server import build_server as build_scheduler
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerLimits, SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.sim_agent import SimAgent
from fedstream_testing.support import LoopThread, plan, upload, wait_until

RUN = "sizes"


def hits(tenant: str, service: str, limit: str) -> float:
    return REGISTRY.get_sample_value("fedstream_limit_hits_total",
                                     {"tenant": tenant, "service": service, "limit": limit}) or 0.0


@pytest.fixture
def agg_factory(tmp_path: Path) -> Iterator:
    servers: list[AggregatorServer] = []

    def make(tenant: str, **limits) -> tuple[AggregatorServer, grpc.Channel]:
        store = LocalModelStore(tmp_path / tenant / "models", tenant)
        service = AggregatorService(MemoryStateStore(tenant), store, tmp_path / tenant / "spool", chunk_bytes=1024)
        server = build_server(service, "127.0.0.1", 0, max_workers=16, limits=AggregatorLimits(**limits))
        servers.append(server)
        return server, channel(f"127.0.0.1:{server.port}")

    yield make
    for s in servers:
        s.stop(0)


def metrics_of(count: int, name_bytes: int) -> dict[str, float]:
    """``count`` metrics whose names take ``name_bytes`` bytes in all."""
    each = name_bytes // count
    return {f"m{i:06d}".ljust(each, "x"): float(i) for i in range(count)}


@pytest.mark.parametrize(("limits", "metrics", "limit", "value"), [
    ({"max_metrics_per_report": 4}, metrics_of(5, 50), "max_metrics_per_report", "5 metrics"),
    ({"max_metric_name_bytes": 100}, metrics_of(2, 120), "max_metric_name_bytes", "120 bytes"),
])
def test_a_report_over_its_metrics_limits_is_refused_from_its_header(agg_factory, limits, metrics, limit, value):
    tenant = f"sz-{limit.replace('_', '-')}"
    server, ch = agg_factory(tenant, **limits)
    pb_grpc.AggregatorControlStub(ch).OpenRound(
        plan(RUN, 0, ["site"], kind="init", timeout=5), timeout=5)

    with pytest.raises(grpc.RpcError) as e:
        upload(ch, "site", random_model(0), run_id=RUN, round_=0, metrics=metrics)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value in e.value.details() and str(next(iter(limits.values()))) in e.value.details()
    assert hits(tenant, "aggregator", limit) == 1
    assert not REGISTRY.get_sample_value("fedstream_update_chunks_received_total", {"tenant": tenant})
    assert server.service.state.get_aggregation(RUN, 0).reports == {}


@pytest.fixture
def federation(tmp_path: Path) -> Iterator:
    """A scheduler over an aggregator whose reports may carry up to 64 metrics of 1 MiB of
    names, the most its settings allow."""
    store = LocalModelStore(tmp_path / "models", "sz-fed")
    service = AggregatorService(MemoryStateStore("sz-fed"), store, tmp_path / "spool", chunk_bytes=4096)
    agg = build_server(service, "127.0.0.1", 0, max_workers=32,
                       limits=AggregatorLimits(max_metrics_per_report=64, max_metric_name_bytes=1 << 20))
    loop = LoopThread()
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{agg.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=5.0)

    async def build() -> SchedulerServer:
        svc = SchedulerService(MemoryStateStore("sz-fed"), AggregatorClient(settings.aggregator_endpoint), settings)
        return await build_scheduler(svc, "127.0.0.1", 0)

    sched = loop.run(build())
    yield agg, sched
    loop.run(sched.stop(0))
    loop.close()
    agg.stop(0)


def test_a_round_whose_reports_pass_4_mib_commits_and_the_scheduler_records_it(federation):
    agg, sched = federation
    metrics = metrics_of(64, (1 << 20) - 64 * 8)  # each report just under 1 MiB: five pass 4 MiB
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{sched.port}", metrics=metrics).start() for i in range(5)]
    runs = scheduler_pb2_grpc.RunServiceStub(channel(f"127.0.0.1:{sched.port}"))
    try:
        runs.StartRun(scheduler_pb2.StartRunRequest(run_id="big", spec=scheduler_pb2.RunSpec(
            task="digits", rounds=1, min_agents=5, round_timeout_s=60, wait_for_agents_s=20,
            training=round_pb2.TrainingConfig(seed=1))), timeout=5)
        state = sched.service.state
        wait_until(lambda: len(state.list_rounds("big")) == 2 and state.list_rounds("big")[1].state.terminal,
                   timeout=90, what="the training round did not end")
    finally:
        for a in agents:
            a.stop()

    rnd = state.get_round("big", 1)
    assert rnd.state == RoundState.COMMITTED, rnd.reason
    assert sorted(r.agent_id for r in rnd.reports) == [f"a{i}" for i in range(5)]
    assert all(r.metrics == metrics for r in rnd.reports)
    assert state.get_run("big").latest_version == agg.service.store.latest("big") == "big/000001"


@pytest.fixture
def scheduler_factory(aggregator) -> Iterator:
    loop = LoopThread()
    servers: list[SchedulerServer] = []

    def make(tenant: str, **limits) -> tuple[SchedulerServer, scheduler_pb2_grpc.AgentServiceStub]:
        settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", limits=SchedulerLimits(**limits))

        async def build() -> SchedulerServer:
            svc = SchedulerService(MemoryStateStore(tenant), AggregatorClient(settings.aggregator_endpoint), settings)
            return await build_scheduler(svc, "127.0.0.1", 0)

        servers.append(loop.run(build()))
        return servers[-1], scheduler_pb2_grpc.AgentServiceStub(channel(f"127.0.0.1:{servers[-1].port}"))

    yield make
    for s in servers:
        loop.run(s.stop(0))
    loop.close()


@pytest.mark.parametrize(("info", "limit", "value", "most"), [
    ({"labels": {f"k{i}": "v" for i in range(100_000)}}, "max_labels", "100000 labels", "64"),
    ({"labels": {"k": "v" * 257}}, "max_label_bytes", "257 bytes", "256"),
    ({"labels": {"k" * 300: "v"}}, "max_label_bytes", "300 bytes", "256"),
    ({"tasks": [f"task{i}" for i in range(10_000)]}, "max_tasks", "10000 tasks", "64"),
    ({"tasks": ["t" * 129]}, "max_task_name_bytes", "129 bytes", "128"),
    ({"capabilities": scheduler_pb2.Capabilities(gpu_name="g" * 1000)}, "max_capability_bytes", "1000 bytes", "256"),
])
def test_a_registration_over_its_size_limits_is_refused_and_changes_nothing(scheduler_factory, info, limit, value, most):
    tenant = f"sz-reg-{limit.replace('_', '-')}-{value.split()[0]}"
    server, stub = scheduler_factory(tenant)
    ok = scheduler_pb2.AgentInfo(agent_id="site", labels={"zone": "eu"}, tasks=["digits"],
                                 capabilities=scheduler_pb2.Capabilities(device="cpu", cpu_count=8))
    stub.Register(scheduler_pb2.RegisterRequest(agent=ok), timeout=5)

    with pytest.raises(grpc.RpcError) as e:
        stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id="site", **info)), timeout=30)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value in e.value.details() and most in e.value.details() and limit in e.value.details()
    assert hits(tenant, "scheduler", limit) == 1
    [agent] = server.service.state.list_agents()
    assert (agent.labels, agent.tasks, agent.capabilities["device"]) == ({"zone": "eu"}, ["digits"], "cpu")


@pytest.mark.parametrize(("limits", "asked", "limit", "low", "high"), [
    ({}, 1, "min_download_chunk_bytes", 65536, MAX_CHUNK_BYTES),
    ({}, 65535, "min_download_chunk_bytes", 65536, MAX_CHUNK_BYTES),
    ({}, 8 << 20, "max_download_chunk_bytes", 65536, MAX_CHUNK_BYTES),
    ({"min_download_chunk_bytes": 4096, "max_download_chunk_bytes": 1 << 20}, 4095, "min_download_chunk_bytes",
     4096, 1 << 20),
    ({"min_download_chunk_bytes": 4096, "max_download_chunk_bytes": 1 << 20}, (1 << 20) + 1,
     "max_download_chunk_bytes", 4096, 1 << 20),
])
def test_a_download_chunk_size_outside_the_limits_is_refused(agg_factory, limits, asked, limit, low, high):
    tenant = f"sz-dl-{asked}"
    server, ch = agg_factory(tenant, **limits)
    model = random_model(0, 64)
    store_model(server.service.store, f"{RUN}/000000", model)

    with pytest.raises(grpc.RpcError) as e:
        download_model(ch, RUN, chunk_bytes=asked, timeout=10)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(str(v) in e.value.details() for v in (asked, low, high)) and limit in e.value.details()
    assert hits(tenant, "aggregator", limit) == 1
    assert not REGISTRY.get_sample_value("fedstream_model_chunks_sent_total", {"tenant": tenant})
    for fine in (0, low, high):  # 0: the server's own chunk size
        assert download_model(ch, RUN, chunk_bytes=fine, timeout=10).version == f"{RUN}/000000"


@pytest.mark.parametrize(("limits", "model", "limit", "value", "most"), [
    ({"max_tensors": 20}, {f"t{i}": ("float32", np.zeros(2, np.float32)) for i in range(21)}, "max_tensors", "21 tensors", "20"),
    ({}, {"t" * 513: ("float32", np.zeros(2, np.float32))}, "max_tensor_name_length", "513 characters", "512"),
    ({"max_tensor_name_length": 24}, {"w": ("float32", np.zeros(2, np.float32)), "t" * 25: ("float32", np.zeros(2, np.float32))},
     "max_tensor_name_length", "25 characters", "24"),
])
def test_an_upload_layout_over_its_size_limits_is_refused_from_its_header(agg_factory, limits, model, limit, value, most):
    tenant = f"sz-layout-{value.split()[0]}"
    server, ch = agg_factory(tenant, **limits)
    pb_grpc.AggregatorControlStub(ch).OpenRound(plan(RUN, 0, ["site"], kind="init", timeout=5), timeout=5)

    with pytest.raises(grpc.RpcError) as e:
        upload(ch, "site", model, run_id=RUN, round_=0)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value in e.value.details() and most in e.value.details() and limit in e.value.details()
    assert hits(tenant, "aggregator", limit) == 1
    assert not REGISTRY.get_sample_value("fedstream_update_chunks_received_total", {"tenant": tenant})
    assert server.service.state.get_aggregation(RUN, 0).reports == {}
    upload(ch, "site", random_model(0), run_id=RUN, round_=0)  # a layout within the limits still counts
    assert list(server.service.state.get_aggregation(RUN, 0).reports) == ["site"]
