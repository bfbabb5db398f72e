"""Differential privacy budgets through the real scheduler, aggregator and admin API (real
Redis): a federation's runs stop when the next round would pass its budget and a new run is
refused, every charged round reports its epsilon, the ledger outlives the scheduler, and
combinations privacy or secure aggregation cannot take are refused naming both settings."""

from __future__ import annotations

import time

import pytest
from test_admin_api import SPEC, api, is_problem, make_federation

from fedstream.state.redis import RedisStateStore, connect
from fedstream_scheduler.privacy_ledger import federation_privacy
from fedstream_testing.sim_agent import SimAgent, add_constant

__all__ = ["api"]  # the fixture

# Two agents, both selected every round (sampling 1), noise multiplier 4: the ledger's epsilon at
# delta 1e-5 is 2.17, 3.19, then 4.01 after one, two, three rounds; a budget of 3.5 fits two.
PRIVACY = {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 4.0, "epsilon_budget": 3.5, "delta": 1e-5}


def wait_for_run(api, token: str, run_id: str) -> dict:
    deadline = time.time() + 90
    while (run := api.call("GET", f"/runs/{run_id}", token).json())["state"] == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    return run


def test_a_federation_runs_until_its_budget_stops_it(api, redis_url):
    tenant = api.tenants["t1"]
    operator, viewer = tenant.tokens["operator"], tenant.tokens["viewer"]
    make_federation(api, "t1", "private", rounds=5, privacy=PRIVACY)
    agents = [SimAgent(f"a{i}", f"127.0.0.1:{tenant.grpc.port}", update=add_constant(0.01)).start() for i in range(2)]
    try:
        started = api.call("POST", "/federations/private/runs", operator, json={"run_id": "run-p1"})
        assert started.status_code == 201, started.text
        run = wait_for_run(api, viewer, "run-p1")
        refused = api.call("POST", "/federations/private/runs", operator, json={"run_id": "run-p2"})
    finally:
        for a in agents:
            a.stop()
    report = api.call("GET", "/federations/private/privacy", viewer).json()

    assert run["state"] == "failed"
    assert run["reason"] == "privacy budget spent: epsilon would reach 4.011 > budget 3.5 at delta 1e-05"
    train = [r for r in run["rounds"] if r["kind"] == "train"]
    assert [r["round"] for r in train] == [1, 2]  # no round opened past the budget
    assert [round(r["epsilon"], 2) for r in train] == [2.17, 3.19]
    assert run["rounds"][0]["epsilon"] is None  # the init round spends nothing
    assert is_problem(refused, 409, "failed_precondition") and "budget 3.5" in refused.json()["detail"]
    assert report["spent"] <= report["budget"] == 3.5
    assert report["spent"] == pytest.approx(train[-1]["epsilon"])
    assert report["remaining"] == pytest.approx(3.5 - report["spent"])
    assert [(c["run_id"], c["round"], c["sampling"]) for c in report["charges"]] == [("run-p1", 1, 1.0), ("run-p1", 2, 1.0)]
    # The ledger lives in the state store: a scheduler started afresh on it reads the same.
    assert federation_privacy(RedisStateStore(connect(redis_url), "t1"), "private") == report


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"privacy": PRIVACY, "strategy": {"name": "median"}}, ["privacy", "'median'"]),
        ({"secure_aggregation": {}, "strategy": {"name": "multi-krum"}}, ["secure_aggregation", "'multi-krum'"]),
        ({"privacy": PRIVACY, "strategy": {"name": "fedpav", "params": {"distill_every": 2}}},
         ["privacy", "distill_every"]),
        ({"secure_aggregation": {}, "training": {"seed": 1, "compression": "int8"}},
         ["secure_aggregation", "training.compression"]),
        ({"privacy": PRIVACY, "asynchronous": {"buffer_size": 2, "concurrency": 2}}, ["privacy", "asynchronous"]),
        ({"privacy": PRIVACY, "strategy": {"name": "cosine"}}, ["privacy", "cosine"]),
        ({"privacy": {**PRIVACY, "delta": 1.5}}, ["privacy.delta"]),
        ({"privacy": {**PRIVACY, "mode": "everywhere"}}, ["privacy.mode"]),
        ({"secure_aggregation": {"max_dropout": 0.5}}, ["secure_aggregation.max_dropout"]),
        ({"secure_aggregation": {}, "max_agents": 1001}, ["secure_aggregation", "at most 1000 participants"]),
    ],
)
def test_combinations_privacy_cannot_take_are_refused_naming_both(api, spec, words):
    admin = api.tenants["t1"].tokens["admin"]

    r = api.call("POST", "/federations", admin, json={"federation_id": "bad", "spec": {**SPEC, **spec}})

    assert is_problem(r, 400, "invalid_argument")
    assert all(w in r.json()["detail"] for w in words), r.json()["detail"]
    assert api.call("GET", "/federations/bad", admin).status_code == 404


def test_privacy_is_patched_in_and_removed_with_null(api):
    admin = api.tenants["t1"].tokens["admin"]
    make_federation(api, "t1", "patched")

    added = api.call("PATCH", "/federations/patched", admin, json={"spec": {"privacy": PRIVACY}})
    tightened = api.call("PATCH", "/federations/patched", admin, json={"spec": {"privacy": {"epsilon_budget": 1.0}}})
    removed = api.call("PATCH", "/federations/patched", admin, json={"spec": {"privacy": None}})

    assert added.json()["spec"]["privacy"] == PRIVACY
    assert tightened.json()["spec"]["privacy"] == {**PRIVACY, "epsilon_budget": 1.0}
    assert removed.json()["spec"]["privacy"] is None
    assert api.call("GET", "/federations/patched/privacy", admin).json()["budget"] is None
