"""The REST admin API over real HTTP (uvicorn on loopback) with its schedulers on a real Redis
and a real aggregator: every endpoint with every role, tenants that cannot see each other,
bad input refused as problem+json, and a federation's runs end to end."""

from __future__ import annotations

import time
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
from fedstream_testing.sim_agent import SimAgent, add_constant
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


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"federation_id": "Bad_Id", "spec": SPEC}, "federation_id"),
        ({"federation_id": "ok", "spec": {**SPEC, "rounds": 0}}, "spec.rounds"),
        ({"federation_id": "ok", "spec": {**SPEC, "fraction": 2}}, "spec.fraction"),
        ({"federation_id": "ok", "spec": {k: v for k, v in SPEC.items() if k != "task"}}, "spec.task"),
        ({"federation_id": "ok", "spec": SPEC, "schedule": {"cron": "every night"}}, "schedule.cron"),
        ({"federation_id": "ok", "spec": SPEC, "schedule": {"cron": "0 0 30 2 *"}}, "'0 0 30 2 *' never fires"),
        ({"federation_id": "ok", "spec": SPEC, "schedule": {"cron": "0 2 * * *", "timezone": "Mars/Olympus"}},
         "schedule.timezone"),
        ({"federation_id": "ok", "spec": SPEC, "schedule": {"cron": "0 2 * * *", "missed": "sometimes"}},
         "schedule.missed"),
        ({"federation_id": "ok", "spec": {**SPEC, "strategy": {"name": "fedpav", "params": {"weights": "x"}}}},
         "weights"),
        ({"federation_id": "ok", "spec": {**SPEC, "strategy": {"name": "nope"}}}, "nope"),
        ({"federation_id": "ok", "spec": SPEC, "colour": "blue"}, "colour"),
    ],
)
def test_bad_federations_are_refused_and_nothing_is_created(api, body, where):
    r = api.call("POST", "/federations", api.tenants["t1"].tokens["admin"], json=body)
    assert is_problem(r, 400, "invalid_argument")
    assert where in r.json()["detail"]
    assert api.tenants["t1"].admin.state.list_federations() == []


def test_conflicts_and_missing_things(api):
    admin = api.tenants["t1"].tokens["admin"]
    body = {"federation_id": "nightly", "spec": SPEC, "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris"}}
    created = api.call("POST", "/federations", admin, json=body)
    assert created.status_code == 201
    schedule = created.json()["schedule"]
    assert schedule.pop("next_unix") > time.time()
    assert schedule == {"cron": "0 2 * * *", "timezone": "Europe/Paris", "missed": "skip", "broken": None}
    assert is_problem(api.call("POST", "/federations", admin, json=body), 409, "already_exists")
    assert is_problem(api.call("GET", "/federations/absent", admin), 404, "federation_not_found")
    assert is_problem(api.call("GET", "/runs/absent", admin), 404, "run_not_found")
    assert is_problem(api.call("GET", "/agents/absent", admin), 404, "agent_not_found")
    assert is_problem(api.call("GET", "/no/such/path", admin), 404, "not_found")
    assert is_problem(api.call("GET", "/runs?federation=absent", admin), 404, "federation_not_found")
    # A federation with a running run cannot be deleted; a finished run cannot be cancelled.
    start_waiting_run(api, "t1", "busy", "busy-run")
    assert is_problem(api.call("DELETE", "/federations/busy", admin), 409, "failed_precondition")
    assert api.call("POST", "/runs/busy-run/cancel", admin).json()["state"] == "cancelled"
    assert is_problem(api.call("POST", "/runs/busy-run/cancel", admin), 409, "failed_precondition")
    assert api.call("DELETE", "/federations/busy", admin).status_code == 204
    # Patching merges the spec and validates it whole.
    patched = api.call("PATCH", "/federations/nightly", admin, json={"spec": {"rounds": 7}, "clear_schedule": True})
    assert patched.json()["spec"]["rounds"] == 7 and patched.json()["spec"]["task"] == "digits"
    assert patched.json()["schedule"] is None
    bad = api.call("PATCH", "/federations/nightly", admin, json={"spec": {"rounds": -1}})
    assert is_problem(bad, 400, "invalid_argument") and "spec.rounds" in bad.json()["detail"]
    assert api.tenants["t1"].admin.state.get_federation("nightly").spec["rounds"] == 7


def test_pagination_and_filters(api):
    admin = api.tenants["t1"].tokens["admin"]
    for i in range(7):
        make_federation(api, "t1", f"f{i}")
    seen, token, pages = [], "", 0
    while True:
        page = api.call("GET", f"/federations?limit=3&page_token={token}", admin).json()
        seen += [f["federation_id"] for f in page["items"]]
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == [f"f{i}" for i in range(7)] and pages == 3
    assert is_problem(api.call("GET", "/federations?page_token=abc", admin), 400, "invalid_argument")
    assert is_problem(api.call("GET", "/federations?limit=0", admin), 400, "invalid_argument")
    assert is_problem(api.call("GET", "/runs?state=sleeping", admin), 400, "invalid_argument")
    start_waiting_run(api, "t1", "w", "waiting")
    register_agent(api, "t1", "a-1")
    assert [r["run_id"] for r in api.call("GET", "/runs?state=running", admin).json()["items"]] == ["waiting"]
    assert api.call("GET", "/runs?state=succeeded", admin).json()["items"] == []
    assert [r["run_id"] for r in api.call("GET", "/runs?federation=w", admin).json()["items"]] == ["waiting"]
    assert [a["agent_id"] for a in api.call("GET", "/agents?status=alive", admin).json()["items"]] == ["a-1"]
    api.call("POST", "/agents/a-1/disable", admin)
    assert api.call("GET", "/agents?status=alive", admin).json()["items"] == []
    assert api.call("GET", "/agents/a-1", admin).json()["status"] == "disabled"


def test_a_federations_runs_end_to_end_and_the_second_warm_starts(api):
    tenant = api.tenants["t1"]
    operator, viewer = tenant.tokens["operator"], tenant.tokens["viewer"]
    make_federation(api, "t1", "digits-nightly")
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{tenant.grpc.port}", examples=10 * (i + 1), update=add_constant(1)).start()
              for i in range(2)]
    try:
        agent = api.call("GET", "/agents/a0", viewer).json()
        deadline = time.time() + 10
        while not agent["connected"] and time.time() < deadline:
            time.sleep(0.1)
            agent = api.call("GET", "/agents/a0", viewer).json()
        assert agent["status"] == "alive" and agent["connected"]
        runs = []
        for _ in range(2):
            started = api.call("POST", "/federations/digits-nightly/runs", operator, json={})
            assert started.status_code == 201, started.text
            run_id = started.json()["run_id"]
            deadline = time.time() + 60
            while (run := api.call("GET", f"/runs/{run_id}", viewer).json())["state"] == "running":
                assert time.time() < deadline
                time.sleep(0.2)
            runs.append(run)
    finally:
        for a in agents:
            a.stop()
    first, second = runs
    assert first["state"] == "succeeded" and first["federation"] == "digits-nightly" and first["trigger"] == "api"
    assert [r["kind"] for r in first["rounds"]] == ["init", "train", "train"]
    assert first["rounds_committed"] == 2
    train = first["rounds"][1]
    assert train["state"] == "committed" and sorted(train["participants"]) == ["a0", "a1"]
    assert train["updates"] == 2 and train["bytes_received"] > 0 and train["duration_s"] > 0
    # The second run starts from the first's model: no init round.
    assert second["spec"]["initial_version"] == first["latest_version"]
    assert [r["kind"] for r in second["rounds"]] == ["train", "train"]
    fed = api.call("GET", "/federations/digits-nightly", viewer).json()
    assert fed["latest_version"] == second["latest_version"]
    rounds = api.call("GET", f"/runs/{first['run_id']}/rounds?state=committed&limit=2", viewer).json()
    assert [r["round"] for r in rounds["items"]] == [0, 1] and rounds["next_page_token"] == "2"


def test_enrollment_tokens_are_shown_once_stored_as_hashes_and_checked(api):
    operator = api.tenants["t1"].tokens["operator"]

    made = api.call("POST", "/enrollment-tokens", operator, json={"agent_id": "site-1", "ttl_s": 120, "name": "lyon"})
    listed = api.call("GET", "/enrollment-tokens", operator).json()["items"]
    stored = api.tenants["t1"].admin.state.list_enrollment_tokens()
    other = api.call("GET", "/enrollment-tokens", api.tenants["t2"].tokens["operator"]).json()["items"]

    assert made.status_code == 201 and made.json()["token"].startswith("fse_")
    assert [t["token_id"] for t in listed] == [made.json()["token_id"]] and "token" not in listed[0]
    assert made.json()["token"] not in repr(stored) and other == []
    assert 0 < made.json()["expires_unix"] - made.json()["created_unix"] <= 120
    for body, field in (({"ttl_s": 0}, "ttl_s"), ({"ttl_s": 10 ** 9}, "ttl_s"), ({"agent_id": "a/b"}, "agent_id"), ({"agent_id": "-x"}, "agent_id"),
                        ({"agent_id": "x" * 129}, "agent_id"), ({"secret": "x"}, "secret")):
        r = api.call("POST", "/enrollment-tokens", operator, json=body)
        assert r.status_code == 400 and field in r.json()["detail"], (body, r.text)
    assert len(api.tenants["t1"].admin.state.list_enrollment_tokens()) == 1


def test_deleting_an_agent_forgets_it(api):
    operator = api.tenants["t1"].tokens["operator"]
    register_agent(api, "t1", "gone")

    assert api.call("DELETE", "/agents/gone", operator).status_code == 204
    assert is_problem(api.call("GET", "/agents/gone", operator), 404, "agent_not_found")
    assert is_problem(api.call("DELETE", "/agents/gone", operator), 404, "agent_not_found")


def test_the_openapi_document_is_the_contract(api):
    doc = httpx.get(api.url.removesuffix("/api/v1") + "/openapi.json", timeout=10).json()
    assert doc["info"]["title"] == "fedstream admin API"
    ops = [(m.upper(), p) for p, item in doc["paths"].items() for m in item]
    for method, path, *_ in ENDPOINTS:
        assert (method, "/api/v1" + path.replace("{fid}", "{federation_id}").replace("{run}", "{run_id}")
                .replace("{agent}", "{agent_id}").replace("{token}", "{token_id}").replace("{run}", "{run_id}")) in ops
    assert "Problem" in doc["components"]["schemas"]


def test_models_listed_described_downloaded_and_pinned(api, tmp_path):
    from safetensors.torch import load_file

    admin_token, viewer = api.tenants["t1"].tokens["operator"], api.tenants["t1"].tokens["viewer"]
    setup_model(api, "t1", 1)
    store = api.tenants["t1"].admin.store
    store_model(store, "mrun-1/000002", random_model(2))
    models = api.call("GET", "/federations/mfed-1/models", viewer).json()["items"]
    assert [m["version"] for m in models] == ["mrun-1/000001", "mrun-1/000002"]
    assert not any(m["pinned"] for m in models)
    one = api.call("GET", "/models/mrun-1/000002", viewer).json()
    assert one["run_id"] == "mrun-1" and one["round"] == 2 and one["metadata"] == {"test": "yes"}
    assert {t["name"] for t in one["tensors"]} == set(random_model(2))
    with httpx.stream("GET", api.url + "/models/mrun-1/000002/download", headers={"Authorization": f"Bearer {viewer}"},
                      timeout=30) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == one["size_bytes"]
        path = tmp_path / "m.safetensors"
        path.write_bytes(b"".join(r.iter_bytes()))
    got = load_file(str(path))
    assert set(got) == set(random_model(2))
    for name, (dtype, arr) in random_model(2).items():
        if dtype != "bfloat16":
            assert (got[name].numpy() == arr).all(), name
    # Pinning: a new run of the federation starts from the newest pinned model, not the latest.
    assert api.call("POST", "/models/mrun-1/000001/pin", admin_token).json()["pinned"]
    assert store.pinned("mrun-1") == ["mrun-1/000001"]

    async def start() -> str:
        return api.tenants["t1"].admin.federations.start_run("mfed-1", "from-pin").spec["initial_version"]

    assert api.loop.run(start()) == "mrun-1/000001"
    assert not api.call("POST", "/models/mrun-1/000001/unpin", admin_token).json()["pinned"]
    # Bad and missing versions.
    assert is_problem(api.call("GET", "/models/mrun-1/000009", viewer), 404, "model_not_found")
    assert is_problem(api.call("GET", "/models/mrun-1/12", viewer), 400, "invalid_argument")
    assert is_problem(api.call("GET", "/models/no-such-run/000001", viewer), 404, "model_not_found")
    assert is_problem(api.call("GET", "/federations/absent/models", viewer), 404, "federation_not_found")


def test_an_unexpected_failure_is_a_problem_without_internals(api, redis_url):
    """A record the code cannot read (written by hand, or by a newer version) fails the one
    request with 500 problem+json; the detail stays in the log, and the API goes on serving."""
    import redis

    make_federation(api, "t1", "broken")
    store = api.tenants["t1"].admin.state
    assert isinstance(store, RedisStateStore)
    redis.Redis.from_url(redis_url).set(store._k("federation", "broken"), b'{"unexpected": "shape"}')
    viewer = api.tenants["t1"].tokens["viewer"]

    r = api.call("GET", "/federations/broken", viewer)

    assert is_problem(r, 500, "internal")
    assert "unexpected" not in r.text and "Traceback" not in r.text
    assert api.call("GET", "/health", None).status_code == 200


def test_every_operator_action_is_audited_with_its_actor(api, caplog):
    tenant = api.tenants["t1"]
    admin, operator = tenant.tokens["admin"], tenant.tokens["operator"]
    ids = {t.name: t.token_id for t in tenant.admin.state.list_tokens()}
    setup_model(api, "t1", 1)
    register_agent(api, "t1", "site-1")
    start_waiting_run(api, "t1", "waits", "run-w")
    caplog.set_level("INFO", logger="fedstream_scheduler.audit")
    actions = [
        (admin, "POST", "/federations", {"federation_id": "audited", "spec": SPEC}),
        (admin, "PATCH", "/federations/audited", {"description": "d"}),
        (operator, "POST", "/federations/audited/runs", {"run_id": "run-a"}),
        (operator, "POST", "/runs/run-a/cancel", None),
        (operator, "POST", "/runs/run-w/cancel", None),
        (admin, "DELETE", "/federations/audited", None),
        (operator, "POST", "/agents/site-1/disable", None),
        (operator, "POST", "/agents/site-1/enable", None),
        (operator, "DELETE", "/agents/site-1", None),
        (operator, "POST", "/enrollment-tokens", {"agent_id": "site-2", "ttl_s": 60}),
        (admin, "POST", "/tokens", {"role": "viewer", "name": "ci"}),
        (operator, "POST", "/models/mrun-1/000001/pin", None),
        (operator, "POST", "/models/mrun-1/000001/unpin", None),
    ]
    created = {}
    for token, method, path, body in actions:
        r = api.call(method, path, token, json=body)
        assert r.status_code < 300, (path, r.text)
        if path in ("/tokens", "/enrollment-tokens"):
            created[path] = r.json()["token_id"]
    api.call("DELETE", f"/enrollment-tokens/{created['/enrollment-tokens']}", operator)
    api.call("DELETE", f"/tokens/{created['/tokens']}", admin)
    assert api.call("GET", "/federations/nothing-here", admin).status_code == 404  # reads are not audited

    entries = api.call("GET", "/audit?limit=500", operator).json()["items"]

    by_admin, by_operator = f"token/{ids['admin token']}", f"token/{ids['operator token']}"
    assert [(e["action"], e["target"], e["actor"]) for e in entries if e["actor"] != "system/scheduler"] == [
        ("federation.create", "federation/audited", by_admin),
        ("federation.update", "federation/audited", by_admin),
        ("run.start", "run/run-a", by_operator),
        ("run.cancel", "run/run-a", by_operator),
        ("run.cancel", "run/run-w", by_operator),
        ("federation.delete", "federation/audited", by_admin),
        ("agent.disable", "agent/site-1", by_operator),
        ("agent.enable", "agent/site-1", by_operator),
        ("agent.delete", "agent/site-1", by_operator),
        ("enrollment_token.create", f"enrollment_token/{created['/enrollment-tokens']}", by_operator),
        ("token.create", f"token/{created['/tokens']}", by_admin),
        ("model.pin", "model/mrun-1/000001", by_operator),
        ("model.unpin", "model/mrun-1/000001", by_operator),
        ("enrollment_token.delete", f"enrollment_token/{created['/enrollment-tokens']}", by_operator),
        ("token.delete", f"token/{created['/tokens']}", by_admin),
    ]
    cancel = next(e for e in entries if e["target"] == "run/run-a" and e["action"] == "run.cancel")
    assert (cancel["actor_name"], cancel["role"]) == ("operator token", "operator")
    assert next(e for e in entries if e["action"] == "token.create")["detail"] == {"role": "viewer", "name": "ci"}
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert f"audit: run.cancel run/run-a by {by_operator} (operator token, operator)" in caplog.messages
    assert "cancelled by token/" in api.call("GET", "/runs/run-a", operator).json()["reason"]
    # The other tenant's log has none of it.
    assert api.call("GET", "/audit", api.tenants["t2"].tokens["admin"]).json()["items"] == []


def test_the_audit_log_is_paged_and_filtered(api):
    admin = api.tenants["t1"].tokens["admin"]
    for i in range(5):
        api.call("POST", "/tokens", admin, json={"role": "viewer", "name": f"n{i}"})
    register_agent(api, "t1", "site-9")
    api.call("POST", "/agents/site-9/disable", api.tenants["t1"].tokens["operator"])

    seen, token, pages = [], "", 0
    while True:
        page = api.call("GET", f"/audit?limit=2&page_token={token}", admin).json()
        seen += [e["action"] for e in page["items"]]
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
    creates = api.call("GET", "/audit?action=token.create&limit=3", admin).json()
    operator_id = next(t.token_id for t in api.tenants["t1"].admin.state.list_tokens() if t.name == "operator token")
    by_operator = api.call("GET", f"/audit?actor=token/{operator_id}", admin).json()["items"]

    assert seen == ["token.create"] * 5 + ["agent.disable"] and pages == 3
    assert [e["detail"]["name"] for e in creates["items"]] == ["n0", "n1", "n2"] and creates["next_page_token"]
    assert [(e["action"], e["target"]) for e in by_operator] == [("agent.disable", "agent/site-9")]
    assert is_problem(api.call("GET", "/audit?action=run.explode", admin), 400, "invalid_argument")
    assert is_problem(api.call("GET", "/audit", api.tenants["t1"].tokens["viewer"]), 403, "permission_denied")


def test_patching_a_federation_merges_nested_blocks_as_a_json_merge_patch(api):
    admin = api.tenants["t1"].tokens["admin"]
    spec = {**SPEC, "selection": {"prefer_fast": True, "fairness_floor": 0.2},
            "training": {"local_epochs": 2, "learning_rate": 0.1}, "strategy": {"name": "fedadam", "params": {"eta": 0.5}}}
    assert api.call("POST", "/federations", admin, json={"federation_id": "merged", "spec": spec}).status_code == 201

    def patch(fields: dict) -> dict:
        reply = api.call("PATCH", "/federations/merged", admin, json={"spec": fields})
        assert reply.status_code == 200, reply.text
        return reply.json()["spec"]

    floor = patch({"selection": {"fairness_floor": 0.3}, "training": {"learning_rate": 0.05},
                   "strategy": {"params": {"tau": 0.01}}})
    reset = patch({"selection": None})
    buffered = patch({"asynchronous": {"buffer_size": 2, "concurrency": 3,
                                       "staleness": {"function": "hinge", "a": 1, "b": 2}}})
    sloped = patch({"asynchronous": {"staleness": {"a": 3}}})
    bad = api.call("PATCH", "/federations/merged", admin, json={"spec": {"asynchronous": {"buffer_size": 0}}})
    synchronous = patch({"asynchronous": None})
    other = patch({"strategy": {"name": "fedprox"}})

    assert floor["selection"] == {"prefer_fast": True, "fairness_floor": 0.3}  # prefer_fast kept
    assert floor["training"]["local_epochs"] == 2 and floor["training"]["learning_rate"] == 0.05
    assert floor["strategy"]["params"]["eta"] == 0.5 and floor["strategy"]["params"]["tau"] == 0.01
    assert reset["selection"] == {"prefer_fast": False, "fairness_floor": 0.2}  # null: the defaults again
    assert buffered["asynchronous"]["staleness"] == {"function": "hinge", "a": 1.0, "b": 2.0}
    assert sloped["asynchronous"]["staleness"] == {"function": "hinge", "a": 3.0, "b": 2.0}
    assert sloped["asynchronous"]["buffer_size"] == 2 and sloped["asynchronous"]["concurrency"] == 3
    assert is_problem(bad, 400, "invalid_argument") and "spec.asynchronous.buffer_size" in bad.json()["detail"]
    assert synchronous["asynchronous"] is None and synchronous["training"]["local_epochs"] == 2
    assert other["strategy"]["name"] == "fedprox" and "eta" not in other["strategy"]["params"]  # fedadam's dropped
    stored = api.tenants["t1"].admin.state.get_federation("merged").spec
    assert stored == other
