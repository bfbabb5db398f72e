"""Identifiers and numbers validated once for both transports, against a real scheduler (gRPC
and REST on loopback over a real Redis): ids are matched whole, non-finite or out-of-range
numbers are refused before anything is created, and whatever one API accepts the other can
read and cancel."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.grpcutil import channel
from fedstream.ids import RUN_ID
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.support import LoopThread

TOKEN = "validation-bootstrap-token-0123456789"
# A run that waits for agents that never come: running until cancelled.
WAITING = {"task": "digits", "min_agents": 50, "wait_for_agents_s": 600}


@dataclass
class Scheduler:
    admin: AdminServices
    runs: scheduler_pb2_grpc.RunServiceStub
    url: str

    def rest(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def run_ids(self) -> set[str]:
        return {r.run_id for r in self.admin.state.list_runs()}


@pytest.fixture(scope="module")
def sched(redis_server, tmp_path_factory) -> Iterator[Scheduler]:
    loop = LoopThread()
    settings_ = SchedulerSettings(aggregator_endpoint="127.0.0.1:1")
    built: dict[str, object] = {}

    async def build() -> ApiServer:
        service = SchedulerService(RedisStateStore(connect(redis_server.url), "valid"),
                                   AggregatorClient("127.0.0.1:1"), settings_)
        admin = AdminServices(service, LocalModelStore(tmp_path_factory.mktemp("valid-models"), "valid"))
        admin.tokens.ensure_bootstrap(TOKEN)
        admin.federations.create("fed", WAITING, "", None)
        built["admin"], built["grpc"] = admin, await build_server(service, "127.0.0.1", 0)
        server = ApiServer(build_api({"valid": admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    admin, grpc_server = built["admin"], built["grpc"]
    assert isinstance(admin, AdminServices) and isinstance(grpc_server, SchedulerServer)
    stub = scheduler_pb2_grpc.RunServiceStub(channel(f"127.0.0.1:{grpc_server.port}"))
    yield Scheduler(admin, stub, f"http://127.0.0.1:{server.port}/api/v1")
    for run in admin.state.list_runs():
        if run.state == "running":
            loop.run(admin.runs.cancel_run(run.run_id))
    loop.run(grpc_server.stop(0))
    loop.run(server.stop())
    loop.close()


def grpc_spec(**overrides: Any) -> scheduler_pb2.RunSpec:
    """The waiting spec with fields set as a hostile client would (ParseDict refuses inf)."""
    spec = json_format.ParseDict(WAITING, scheduler_pb2.RunSpec())
    for name, value in overrides.items():
        if name == "training":
            for inner, v in value.items():
                setattr(spec.training, inner, v)
        elif name == "strategy":
            spec.strategy.name = value["name"]
            spec.strategy.params.update(value["params"])
        else:
            setattr(spec, name, value)
    return spec


def refused_on_grpc(sched: Scheduler, spec: scheduler_pb2.RunSpec, run_id: str) -> str:
    with pytest.raises(grpc.RpcError) as e:
        sched.runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id=run_id), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    return e.value.details() or ""


@pytest.mark.parametrize("run_id", ["newline\n", "tab\t", "x\ny", "\nlead", "UPPER", "a" * 64])
def test_ids_are_matched_whole_on_both_transports(sched, run_id):
    before = sched.run_ids()
    assert "run id" in refused_on_grpc(sched, grpc_spec(), run_id)
    r = sched.rest("POST", "/federations/fed/runs", json={"run_id": run_id})
    assert r.status_code == 400 and "run_id" in r.json()["detail"], r.text
    assert sched.run_ids() == before


@pytest.mark.parametrize("field", ["round_timeout_s", "wait_for_agents_s", "fraction", "training.learning_rate"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300])
def test_non_finite_and_out_of_range_numbers_are_refused_and_nothing_is_created(sched, field, value):
    before = sched.run_ids()
    outer, _, inner = field.partition(".")
    fields: dict[str, object] = {outer: {inner: value}} if inner else {outer: value}
    assert outer in refused_on_grpc(sched, grpc_spec(**fields), "")
    # Over REST the same numbers as JSON literals (Python's reader turns 1e999 into inf).
    literal = {float("inf"): "1e999", float("-inf"): "-Infinity"}.get(value, "NaN" if value != value else repr(value))
    body = '{"federation_id": "nf", "spec": {"task": "digits", %s}}' % (
        f'"{outer}": {{"{inner}": {literal}}}' if inner else f'"{outer}": {literal}')
    r = sched.rest("POST", "/federations", content=body)
    assert r.status_code == 400 and field in r.json()["detail"], r.text
    assert sched.run_ids() == before
    assert [f.federation_id for f in sched.admin.state.list_federations()] == ["fed"]


@pytest.mark.parametrize("params", [{"eta": float("inf")}, {"tau": float("nan")}])
def test_non_finite_strategy_parameters_are_refused(sched, params):
    before = sched.run_ids()
    details = refused_on_grpc(sched, grpc_spec(strategy={"name": "fedadam", "params": params}), "")
    assert "strategy.params" in details
    assert sched.run_ids() == before


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(run_id=st.from_regex(RUN_ID, fullmatch=True), via_grpc=st.booleans())
def test_any_id_the_validator_accepts_round_trips_on_both_transports(sched, run_id, via_grpc):
    if run_id in sched.run_ids():
        return
    if via_grpc:
        sched.runs.StartRun(scheduler_pb2.StartRunRequest(spec=grpc_spec(), run_id=run_id), timeout=10)
    else:
        assert sched.rest("POST", "/federations/fed/runs", json={"run_id": run_id}).status_code == 201
    quoted = urllib.parse.quote(run_id, safe="")
    assert sched.rest("GET", f"/runs/{quoted}").json()["run_id"] == run_id
    assert sched.runs.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=10).run_id == run_id
    if via_grpc:
        assert sched.rest("POST", f"/runs/{quoted}/cancel").json()["state"] == "cancelled"
    else:
        cancelled = sched.runs.CancelRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=10)
        assert cancelled.state == scheduler_pb2.RUN_STATE_CANCELLED


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"target_updates": 51}, "target_updates 51 exceeds the agents a round can have"),
        ({"target_updates": 5, "min_updates": 10}, "target_updates 5 is below min_updates 10"),
        ({"selection": {"prefer_fast": True, "fairness_floor": 1.5}}, "selection.fairness_floor"),
    ],
)
def test_over_selection_specs_out_of_range_are_refused_on_both_transports(sched, fields, named):
    before = sched.run_ids()
    assert named in refused_on_grpc(sched, json_format.ParseDict({**WAITING, **fields}, scheduler_pb2.RunSpec()), "")
    r = sched.rest("POST", "/federations", json={"federation_id": "os", "spec": {**WAITING, **fields}})
    assert r.status_code == 400 and named in r.json()["detail"], r.text
    assert sched.run_ids() == before
    assert [f.federation_id for f in sched.admin.state.list_federations()] == ["fed"]


def test_an_over_selected_spec_round_trips_on_both_transports(sched):
    fields = {**WAITING, "target_updates": 40, "selection": {"prefer_fast": True, "fairness_floor": 0.0}}
    started = sched.runs.StartRun(scheduler_pb2.StartRunRequest(
        spec=json_format.ParseDict(fields, scheduler_pb2.RunSpec()), run_id="over-selected"), timeout=10)

    got = sched.rest("GET", "/runs/over-selected").json()

    assert started.spec.target_updates == 40 and started.spec.selection.prefer_fast
    assert started.spec.selection.HasField("fairness_floor") and started.spec.selection.fairness_floor == 0.0
    assert got["spec"]["target_updates"] == 40
    assert got["spec"]["selection"] == {"prefer_fast": True, "fairness_floor": 0.0}
