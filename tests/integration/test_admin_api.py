"""The REST admin API over real HTTP (uvicorn on loopback) with its schedulers on a real Redis
and a real aggregator: every endpoint with every role, tenants that cannot see each other, tokens,
health and a scheduler still starting. Its fixture and helpers serve test_admin_api_resources.py
(federations, runs, agents, models refused and served) and test_admin_api_audit.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from fedstream.state import RunRecord
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.support import LoopThread

ROLES = ("viewer", "operator", "admin")
SPEC = {"task": "digits", "rounds": 2, "min_agents": 2, "round_timeout_s": 20, "wait_for_agents_s": 30,
        "training": {"seed": 1}}


@dataclass
class Tenant:
    name: str
    admin: AdminServices
    grpc: SchedulerServer
    tokens: dict[str, str]


@dataclass
class Api:
    url: str
    loop: LoopThread
    tenants: dict[str, Tenant]

    def call(self, method: str, path: str, token: str | None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture
def api(aggregator, model_store, redis_url, tmp_path) -> Iterator[Api]:
    loop = LoopThread()
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=2.0)
    tenants: dict[str, Tenant] = {}

    async def build() -> ApiServer:
        for name in ("t1", "t2"):
            service = SchedulerService(RedisStateStore(connect(redis_url), name),
                                       AggregatorClient(settings.aggregator_endpoint), settings)
            store = model_store if name == "t1" else LocalModelStore(tmp_path / "models", tenant=name)
            admin = AdminServices(service, store)
            admin.tokens.ensure_bootstrap(f"bootstrap-secret-of-{name}")
            tokens = {"bootstrap": f"bootstrap-secret-of-{name}"}
            for role in ROLES:
                tokens[role] = admin.tokens.create(role, f"{role} token")[1]
            tenants[name] = Tenant(name, admin, await build_server(service, "127.0.0.1", 0), tokens)
        server = ApiServer(build_api({t.name: t.admin for t in tenants.values()}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(build())
    yield Api(f"http://127.0.0.1:{server.port}/api/v1", loop, tenants)
    for t in tenants.values():
        for run in t.admin.state.list_runs():
            if run.state == "running":
                loop.run(t.admin.runs.cancel_run(run.run_id))
        loop.run(t.grpc.stop(0))
    loop.run(server.stop())
    loop.close()


def make_federation(api: Api, tenant: str, fid: str, **spec) -> None:
    api.tenants[tenant].admin.federations.create(fid, {**SPEC, **spec}, "", None)


def start_waiting_run(api: Api, tenant: str, fid: str, run_id: str) -> None:
    """A run that waits for agents that never come: running until cancelled."""
    make_federation(api, tenant, fid, min_agents=50, wait_for_agents_s=300)
    api.loop.run(_start(api.tenants[tenant].admin, fid, run_id))


async def _start(admin: AdminServices, fid: str, run_id: str) -> None:
    admin.federations.start_run(fid, run_id)


def register_agent(api: Api, tenant: str, agent_id: str) -> None:
    from fedstream.state import AgentRecord

    api.tenants[tenant].admin.agents.register(AgentRecord(agent_id, labels={"site": "lyon"},
                                                             capabilities={"device": "cpu"}, tasks=["digits"]))


# Each endpoint: method, path, least role, a body, and what must exist first (by tenant).
def setup_federation(api, t, n):
    make_federation(api, t, f"fed-{n}")
    return {"fid": f"fed-{n}"}


def setup_run(api, t, n):
    start_waiting_run(api, t, f"fed-{n}", f"run-{n}")
    return {"fid": f"fed-{n}", "run": f"run-{n}"}


def setup_agent(api, t, n):
    register_agent(api, t, f"agent-{n}")
    return {"agent": f"agent-{n}"}


def setup_token(api, t, n):
    return {"token": api.tenants[t].admin.tokens.create("viewer", f"spare {n}")[0].token_id}


def setup_enrollment(api, t, n):
    return {"token": api.tenants[t].admin.enrollment.create_token(f"site-{n}", 60, "spare")[0].token_id}


def setup_model(api, t, n):
    admin = api.tenants[t].admin
    make_federation(api, t, f"mfed-{n}")
    admin.state.create_run(RunRecord(f"mrun-{n}", {}, state="succeeded", federation=f"mfed-{n}",
                                     latest_version=f"mrun-{n}/000001"))
    store_model(admin.store, f"mrun-{n}/000001", random_model(n))
    return {"fid": f"mfed-{n}", "run": f"mrun-{n}", "number": "000001"}


def setup_nothing(api, t, n):
    return {}


def setup_release_model(api, t, n):
    params = setup_model(api, t, n)
    api.tenants[t].admin.federations.update(params["fid"], releases={"channels": {"staging": {}}})
    return {**params, "version": f"{params['run']}/{params['number']}"}


def setup_release(api, t, n):
    from fedstream_scheduler.audit import SYSTEM

    params = setup_release_model(api, t, n)
    rel = api.tenants[t].admin.releases.propose(params["fid"], "staging", params["version"], "", SYSTEM)
    return {**params, "release_id": rel.release_id}


def setup_request(api, t, n):
    import secrets

    from fedstream.state import RunRequestRecord

    make_federation(api, t, f"qfed-{n}")
    rid = f"req-{secrets.token_hex(6)}"
    api.tenants[t].admin.state.create_run_request(RunRequestRecord(rid, f"qfed-{n}", "site-1", "more data"))
    return {"fid": f"qfed-{n}", "request_id": rid}


ENDPOINTS = [
    ("POST", "/federations", "admin", lambda p: {"federation_id": f"new-{p['n']}", "spec": SPEC}, setup_nothing, 201),
    ("GET", "/federations", "viewer", None, setup_federation, 200),
    ("GET", "/federations/{fid}", "viewer", None, setup_federation, 200),
    ("PATCH", "/federations/{fid}", "admin", lambda p: {"description": "changed"}, setup_federation, 200),
    ("DELETE", "/federations/{fid}", "admin", None, setup_federation, 204),
    ("POST", "/federations/{fid}/runs", "operator", lambda p: {"run_id": f"started-{p['n']}"}, setup_federation, 201),
    ("GET", "/runs", "viewer", None, setup_run, 200),
    ("GET", "/runs/{run}", "viewer", None, setup_run, 200),
    ("GET", "/runs/{run}/rounds", "viewer", None, setup_run, 200),
    ("POST", "/runs/{run}/cancel", "operator", None, setup_run, 200),
    ("GET", "/agents", "viewer", None, setup_agent, 200),
    ("GET", "/agents/{agent}", "viewer", None, setup_agent, 200),
    ("POST", "/agents/{agent}/disable", "operator", None, setup_agent, 200),
    ("POST", "/agents/{agent}/enable", "operator", None, setup_agent, 200),
    ("DELETE", "/agents/{agent}", "operator", None, setup_agent, 204),
    ("POST", "/enrollment-tokens", "operator", lambda p: {"agent_id": f"site-{p['n']}", "ttl_s": 60}, setup_nothing, 201),
    ("GET", "/enrollment-tokens", "operator", None, setup_enrollment, 200),
    ("DELETE", "/enrollment-tokens/{token}", "operator", None, setup_enrollment, 204),
    ("GET", "/federations/{fid}/models", "viewer", None, setup_model, 200),
    ("GET", "/models/{run}/{number}", "viewer", None, setup_model, 200),
    ("GET", "/models/{run}/{number}/download", "viewer", None, setup_model, 200),
    ("POST", "/models/{run}/{number}/pin", "operator", None, setup_model, 200),
    ("POST", "/models/{run}/{number}/unpin", "operator", None, setup_model, 200),
    ("POST", "/tokens", "admin", lambda p: {"role": "viewer"}, setup_nothing, 201),
    ("GET", "/tokens", "admin", None, setup_nothing, 200),
    ("DELETE", "/tokens/{token}", "admin", None, setup_token, 204),
    ("GET", "/audit", "operator", None, setup_nothing, 200),
    ("GET", "/models/{run}/{number}/export", "viewer", None, setup_model, 200),
    ("POST", "/federations/{fid}/releases", "operator", lambda p: {"channel": "staging", "version": p["version"]},
     setup_release_model, 201),
    ("GET", "/federations/{fid}/releases", "viewer", None, setup_release, 200),
    ("GET", "/federations/{fid}/channels", "viewer", None, setup_release, 200),
    ("GET", "/releases/{release_id}", "viewer", None, setup_release, 200),
    ("POST", "/releases/{release_id}/approve", "admin", None, setup_release, 200),
    ("POST", "/releases/{release_id}/reject", "admin", lambda p: {"reason": "not this one"}, setup_release, 200),
    ("GET", "/federations/{fid}/run-requests", "viewer", None, setup_request, 200),
    ("POST", "/run-requests/{request_id}/approve", "operator", None, setup_request, 200),
    ("POST", "/run-requests/{request_id}/deny", "operator", lambda p: {"reason": "not now"}, setup_request, 200),
    ("GET", "/whoami", "viewer", None, setup_nothing, 200),
]
IDS = [f"{m} {p}" for m, p, *_ in ENDPOINTS]


def every_page(api: Api, path: str, token: str) -> tuple[list[dict], int]:
    """Every item of a paged list, following next_page_token, and how many pages it took."""
    items: list[dict] = []
    page_token, pages = "", 0
    while True:
        page = api.call("GET", f"{path}&page_token={page_token}", token).json()
        items += page["items"]
        pages += 1
        page_token = page["next_page_token"]
        if page_token is None:
            return items, pages


def is_problem(r: httpx.Response, status: int, code: str) -> bool:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["code"] == code and body["detail"]
    return True


@pytest.mark.parametrize(("method", "path", "least", "body", "setup", "ok"), ENDPOINTS, ids=IDS)
def test_every_endpoint_with_every_role(api, method, path, least, body, setup, ok):
    for n, who in enumerate((None, "not-a-token", *ROLES), start=1):
        params = setup(api, "t1", n)
        params["n"] = n
        url = path.format(**params)
        token = api.tenants["t1"].tokens.get(who, who) if who else None
        r = api.call(method, url, token, json=body(params) if body else None)
        if who is None or who == "not-a-token":
            assert is_problem(r, 401, "unauthenticated")
            assert r.headers["www-authenticate"] == "Bearer"
        elif ROLES.index(who) < ROLES.index(least):
            assert is_problem(r, 403, "permission_denied")
            assert least in r.json()["detail"]
        else:
            assert r.status_code == ok, (who, r.text)


@pytest.mark.parametrize(("method", "path", "least", "body", "setup", "ok"),
                         [e for e in ENDPOINTS if "{" in e[1]], ids=[i for i, e in zip(IDS, ENDPOINTS, strict=True) if "{" in e[1]])
def test_a_tenants_token_finds_nothing_of_another_tenant(api, method, path, least, body, setup, ok):
    params = setup(api, "t2", 1)
    params["n"] = 1
    r = api.call(method, path.format(**params), api.tenants["t1"].tokens["admin"], json=body(params) if body else None)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    # ... while the owner's token does reach it.
    r = api.call(method, path.format(**params), api.tenants["t2"].tokens["admin"], json=body(params) if body else None)
    assert r.status_code == ok, r.text


def test_lists_show_only_the_tokens_tenant(api):
    make_federation(api, "t1", "mine")
    make_federation(api, "t2", "theirs")
    register_agent(api, "t2", "their-agent")
    t1 = api.tenants["t1"].tokens["viewer"]
    assert [f["federation_id"] for f in api.call("GET", "/federations", t1).json()["items"]] == ["mine"]
    assert api.call("GET", "/agents", t1).json()["items"] == []
    tokens = api.call("GET", "/tokens", api.tenants["t1"].tokens["admin"]).json()["items"]
    assert {t["name"] for t in tokens} == {"bootstrap", "viewer token", "operator token", "admin token"}
    assert all("sha256" not in t and "token" not in t for t in tokens)


def test_tokens_are_stored_as_hashes_and_revocation_takes_effect(api):
    admin = api.tenants["t1"].tokens["admin"]
    created = api.call("POST", "/tokens", admin, json={"role": "operator", "name": "ci"}).json()
    secret = created["token"]
    assert secret.startswith("fst_") and len(secret) > 40
    stored = [t for t in api.tenants["t1"].admin.state.list_tokens() if t.token_id == created["token_id"]]
    assert stored[0].sha256 != secret and secret not in repr(stored)
    assert api.call("GET", "/runs", secret).status_code == 200
    assert api.call("DELETE", f"/tokens/{created['token_id']}", admin).status_code == 204
    assert is_problem(api.call("GET", "/runs", secret), 401, "unauthenticated")


def test_a_scheduler_still_starting_answers_503_and_login_waits_for_it(api, tmp_path):
    """Before the scheduler goes live (state store reached, bootstrap token installed) a token
    is not refused as unknown: the API answers 503 with Retry-After, and `fedstream login
    --wait` tries again until it goes live."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    tenants = [t.admin for t in api.tenants.values()]
    for admin in tenants:
        admin.live = False
    r = api.call("GET", "/runs", "any-token-at-all")
    assert is_problem(r, 503, "unavailable") and r.headers["Retry-After"] == "1" and "starting" in r.json()["detail"]
    timer = threading.Timer(1.5, lambda: [setattr(admin, "live", True) for admin in tenants])
    timer.start()
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "fedstream"), "login", "--api", api.url.removesuffix("/api/v1"),
             "--token", api.tenants["t1"].tokens["bootstrap"], "--wait", "30"],
            capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path)},
        )
    finally:
        timer.cancel()
    assert done.returncode == 0, done.stdout + done.stderr


def test_health_needs_no_token(api):
    r = api.call("GET", "/health", None)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
