"""The admin API's bodies and parameters fuzzed by hypothesis over real HTTP, against a scheduler
on a real Redis and a real aggregator: federation bodies (a valid one with fields replaced by
wrong types, huge, negative and non-finite numbers, long and unicode strings, nested junk), path
ids and query parameters. After each input the API answers health; a refused input answers a
4xx problem+json, never a 500, and leaves federations, runs, agents and tokens exactly as they
were. At the end, two agents train a normal run of a federation whose rounds commit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.state.redis import RedisStateStore, connect
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.sim_agent import SimAgent, add_constant
from fedstream_testing.support import LoopThread

TOKEN = "property-bootstrap-token-0123456789"
SPEC = {"task": "digits", "rounds": 1, "min_agents": 2, "round_timeout_s": 20, "wait_for_agents_s": 30,
        "training": {"seed": 1}}
# A federation whose runs wait for agents that never come: a run started by a drawn input stays
# running, unchanged, until the end of the test.
WAITING = {**SPEC, "min_agents": 50, "wait_for_agents_s": 600}


@dataclass
class Api:
    url: str
    admin: AdminServices
    grpc: SchedulerServer

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=30, **kw)

    def snapshot(self) -> tuple[Any, ...]:
        s = self.admin.state
        return (s.list_federations(), sorted((r.run_id, r.state) for r in s.list_runs()),
                s.list_agents(), s.list_tokens(), s.list_enrollment_tokens())


@pytest.fixture
def api(aggregator, model_store, redis_url) -> Iterator[Api]:
    loop = LoopThread()
    cfg = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                            heartbeat_ttl_s=2.0)
    holder: dict[str, Any] = {}

    async def build() -> ApiServer:
        service = SchedulerService(RedisStateStore(connect(redis_url), "props"),
                                   AggregatorClient(cfg.aggregator_endpoint), cfg)
        admin = AdminServices(service, model_store)
        admin.tokens.ensure_bootstrap(TOKEN)
        admin.federations.create("fed", WAITING, "", None)
        holder["admin"], holder["grpc"] = admin, await build_server(service, "127.0.0.1", 0)
        server = ApiServer(build_api({"props": admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    admin = holder["admin"]
    yield Api(f"http://127.0.0.1:{server.port}/api/v1", admin, holder["grpc"])
    for run in admin.state.list_runs():
        if run.state == "running":
            loop.run(admin.runs.cancel_run(run.run_id))
    loop.run(holder["grpc"].stop(0))
    loop.run(server.stop())
    loop.close()


# Junk: every JSON type, numbers at and beyond every range, non-finite ones as Python's json
# writes them (NaN, Infinity), long and unicode strings, nested containers.
NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 2**31, 2**63, -(2**63)]),
                    st.floats(allow_nan=True, allow_infinity=True))
TEXT = st.one_of(st.text(max_size=40), st.text(min_size=1000, max_size=5000), st.sampled_from(["", "fed\n", "\x00", "é" * 200]))
JUNK = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=20)
DEEP = st.integers(1, 300).map(lambda n: "[" * n + "]" * n)


def federation_body() -> st.SearchStrategy[dict[str, Any]]:
    """A valid federation with one or several fields (top level, spec or schedule) replaced."""
    fields = [*(("spec", k) for k in SPEC), ("spec", "training"), ("spec", "strategy"), ("spec", "fraction"),
              ("federation_id",), ("spec",), ("schedule",), ("schedule", "cron"), ("schedule", "timezone"),
              ("description",), ("extra",)]

    def build(fid: str, changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"federation_id": fid, "spec": dict(SPEC), "schedule": {"cron": "0 2 * * *"}}
        for path, value in changes:
            where = body
            for key in path[:-1]:
                if not isinstance(where.get(key), dict):
                    where[key] = {}
                where = where[key]
            where[path[-1]] = value
        return body

    ids = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
    return st.builds(build, ids, st.lists(st.tuples(st.sampled_from(fields), JUNK), min_size=1, max_size=3))


def encoded(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


PATH_ID = st.one_of(TEXT, st.sampled_from(["fed", "fed\n", "..", "%2e%2e", "a" * 300])).filter(bool)
LISTINGS = ["/federations", "/runs", "/agents", "/tokens", "/enrollment-tokens", "/runs/absent/rounds",
            "/federations/fed/models"]
QUERY = st.dictionaries(st.sampled_from(["limit", "page_token", "state", "status", "federation"]),
                        st.one_of(TEXT, NUMBERS.map(str)), max_size=3)
ID_PATHS = ["/federations/{}", "/runs/{}", "/runs/{}/cancel", "/agents/{}", "/agents/{}/disable",
            "/models/{}/1", "/models/run/{}", "/federations/{}/runs", "/tokens/{}", "/enrollment-tokens/{}"]

REQUESTS = st.one_of(
    st.tuples(st.just("POST"), st.just("/federations"), federation_body().map(encoded)),
    st.tuples(st.just("POST"), st.just("/federations"), DEEP.map(str.encode)),
    st.tuples(st.just("PATCH"), st.just("/federations/fed"),
              st.builds(lambda k, v: encoded({"spec": {k: v}}), st.sampled_from(list(SPEC)), JUNK)),
    st.tuples(st.just("PATCH"), st.just("/federations/fed"), JUNK.map(encoded)),
    st.tuples(st.sampled_from(["POST"]), st.sampled_from(["/tokens", "/enrollment-tokens", "/federations/fed/runs"]),
              JUNK.map(encoded)),
    st.tuples(st.just("GET"), st.builds(lambda p, q: p + "?" + "&".join(f"{k}={quote(v)}" for k, v in q.items()),
                                        st.sampled_from(LISTINGS), QUERY), st.just(b"")),
    st.tuples(st.sampled_from(["GET", "POST", "DELETE"]),
              st.builds(lambda p, i: p.format(quote(i, safe="")), st.sampled_from(ID_PATHS), PATH_ID), st.just(b"")),
)


def check_one(api: Api, method: str, path: str, body: bytes) -> None:
    before = api.snapshot()
    headers = {"content-type": "application/json"} if body else {}
    r = httpx.request(method, api.url + path, content=body or None, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}", **headers})
    what = f"{method} {path} {body[:200]!r} -> {r.status_code} {r.text[:300]}"
    assert r.status_code < 500, what
    if r.status_code >= 400:
        assert "application/problem+json" in r.headers["content-type"], what
        assert r.json()["detail"], what
        assert api.snapshot() == before, f"a refused input changed state: {what}"
    assert httpx.get(api.url + "/health", timeout=10).status_code == 200, what


def test_drawn_requests_are_answered_safely_and_a_run_still_commits(api):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(REQUESTS)
    def drawn(request: tuple[str, str, bytes]) -> None:
        check_one(api, *request)

    drawn()
    for run in api.admin.state.list_runs():
        if run.state == "running":
            cancelled = api.call("POST", f"/runs/{quote(run.run_id, safe='')}/cancel")
            # A run may end between the listing and the cancel: only a finished one refuses.
            assert cancelled.status_code == 200 or api.admin.state.get_run(run.run_id).state != "running", cancelled.text
    assert api.call("POST", "/federations", json={"federation_id": "after-fuzz", "spec": SPEC}).status_code == 201
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{api.grpc.port}", examples=10, update=add_constant(1)).start()
              for i in range(2)]
    try:
        started = api.call("POST", "/federations/after-fuzz/runs", json={})
        assert started.status_code == 201, started.text
        run_id, deadline = started.json()["run_id"], time.time() + 60
        while (run := api.call("GET", f"/runs/{run_id}").json())["state"] == "running":
            assert time.time() < deadline, run
            time.sleep(0.2)
    finally:
        for a in agents:
            a.stop()
    assert run["state"] == "succeeded", run
    assert run["rounds_committed"] == 1 and run["rounds"][-1]["state"] == "committed"
