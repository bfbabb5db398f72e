"""The REST admin API's resources over real HTTP with a real Redis and aggregator: bad
federations refused and nothing created, conflicts and missing things, pagination and filters, a
federation's runs end to end, enrollment tokens, agents, models, the OpenAPI contract, an
unexpected failure, and federations patched as JSON merge patches."""

from __future__ import annotations

import time

import httpx
import pytest
from test_admin_api import (
    ENDPOINTS,
    SPEC,
    api,
    every_page,
    is_problem,
    make_federation,
    register_agent,
    setup_model,
    start_waiting_run,
)

from fedstream.state.redis import RedisStateStore
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.sim_agent import SimAgent, add_constant

__all__ = ["api"]  # the fixture


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
    federations, pages = every_page(api, "/federations?limit=3", admin)
    seen = [f["federation_id"] for f in federations]
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
