"""Privacy budgets against hostile or careless operators through the real admin API (real
Redis): raising a federation's budget mid-way is an admin's audited change and spends nothing
back; a lower delta raises what was spent and refuses the next run; a vanishing noise
multiplier is refused before any round with a finite epsilon; two schedulers charging one
ledger at once never pass its budget."""

from __future__ import annotations

import threading

import pytest
from test_admin_api import api, is_problem, make_federation
from test_privacy_budget import PRIVACY

from fedstream.privacy import PrivacySpec
from fedstream.state import RunRecord
from fedstream.state.redis import RedisStateStore, connect
from fedstream_scheduler.privacy_ledger import BudgetSpent, PrivacyLedger

__all__ = ["api"]  # the fixture


def charge_rounds(state, federation: str, rounds: int) -> None:
    """``rounds`` training rounds of a run of the federation charged as a scheduler does (both
    of two sites selected): epsilon 2.17, then 3.19 under PRIVACY."""
    run = RunRecord("run-p1", {}, federation=federation)
    for r in range(1, rounds + 1):
        PrivacyLedger(state).charge(run, r, PrivacySpec.from_dict(PRIVACY), ["a0", "a1"], 2)


def test_raising_a_budget_mid_way_is_an_audited_admin_change(api):
    tokens = api.tenants["t1"].tokens
    make_federation(api, "t1", "private", privacy=PRIVACY)
    charge_rounds(api.tenants["t1"].admin.state, "private", 2)
    spent = api.call("GET", "/federations/private/privacy", tokens["viewer"]).json()["spent"]

    as_operator = api.call("PATCH", "/federations/private", tokens["operator"],
                           json={"spec": {"privacy": {"epsilon_budget": 10.0}}})
    as_admin = api.call("PATCH", "/federations/private", tokens["admin"],
                        json={"spec": {"privacy": {"epsilon_budget": 10.0}}})
    report = api.call("GET", "/federations/private/privacy", tokens["viewer"]).json()

    assert is_problem(as_operator, 403, "permission_denied")
    assert as_admin.status_code == 200, as_admin.text
    assert (report["budget"], report["spent"], len(report["charges"])) == (10.0, spent, 2)  # nothing spent back
    entries = api.call("GET", "/audit?action=federation.update", tokens["admin"]).json()["items"]
    assert len(entries) == 1 and entries[0]["role"] == "admin"
    before, after = entries[0]["detail"]["privacy"].split(" -> ")
    assert '"epsilon_budget": 3.5' in before and '"epsilon_budget": 10.0' in after


def test_a_lower_delta_raises_what_was_spent_and_refuses_the_next_run(api):
    tokens = api.tenants["t1"].tokens
    make_federation(api, "t1", "private", privacy=PRIVACY)
    charge_rounds(api.tenants["t1"].admin.state, "private", 2)

    api.call("PATCH", "/federations/private", tokens["admin"], json={"spec": {"privacy": {"delta": 1e-10}}})
    report = api.call("GET", "/federations/private/privacy", tokens["viewer"]).json()
    refused = api.call("POST", "/federations/private/runs", tokens["operator"], json={"run_id": "run-p2"})

    assert report["spent"] > report["budget"] == 3.5 and report["remaining"] == 0.0
    assert is_problem(refused, 409, "failed_precondition")
    assert "at delta 1e-10" in refused.json()["detail"]


def test_a_vanishing_noise_multiplier_is_refused_before_any_round(api):
    tokens = api.tenants["t1"].tokens
    make_federation(api, "t1", "noiseless", privacy={**PRIVACY, "noise_multiplier": 1e-9})

    refused = api.call("POST", "/federations/noiseless/runs", tokens["operator"], json={"run_id": "run-n1"})
    report = api.call("GET", "/federations/noiseless/privacy", tokens["viewer"]).json()

    assert is_problem(refused, 409, "failed_precondition")
    assert "privacy budget spent: epsilon would reach 2.2e+18 > budget 3.5" in refused.json()["detail"]
    assert report["charges"] == [] and report["spent"] == 0.0
    assert api.call("GET", "/runs/run-n1", tokens["viewer"]).status_code == 404


def test_two_schedulers_charging_one_ledger_at_once_never_pass_its_budget(redis_url):
    schedulers = [PrivacyLedger(RedisStateStore(connect(redis_url), "t1")) for _ in range(2)]
    privacy = PrivacySpec.from_dict(PRIVACY)  # a budget of 3.5: two rounds of two sites fit
    outcomes: list[str] = []
    go = threading.Barrier(8)

    def charge(i: int) -> None:
        go.wait()
        try:
            schedulers[i % 2].charge(RunRecord(f"run-{i}", {}, federation="shared"), 1, privacy, ["a0", "a1"], 2)
            outcomes.append("charged")
        except BudgetSpent:
            outcomes.append("refused")

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    charges = schedulers[0].charges("shared")
    assert sorted(outcomes) == ["charged"] * 2 + ["refused"] * 6
    assert [round(c.epsilon, 2) for c in charges] == [2.17, 3.19]
    assert len({c.run_id for c in charges}) == 2


def test_one_round_charged_by_two_schedulers_at_once_is_charged_once(redis_url):
    schedulers = [PrivacyLedger(RedisStateStore(connect(redis_url), "t1")) for _ in range(2)]
    run, privacy = RunRecord("run-1", {}, federation="shared"), PrivacySpec.from_dict(PRIVACY)
    go = threading.Barrier(6)
    got: list[float] = []

    def charge(i: int) -> None:
        go.wait()
        got.append(schedulers[i % 2].charge(run, 1, privacy, ["a0", "a1"], 2).epsilon)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert len(schedulers[1].charges("shared")) == 1
    assert len(got) == 6 and len(set(got)) == 1 and round(got[0], 2) == 2.17


def test_an_epsilon_that_is_not_a_number_is_refused(monkeypatch, redis_url):
    ledger = PrivacyLedger(RedisStateStore(connect(redis_url), "t1"))
    monkeypatch.setattr("fedstream_scheduler.privacy_ledger.epsilon", lambda charges, delta: float("nan"))

    with pytest.raises(BudgetSpent, match="epsilon would reach nan"):
        ledger.charge(RunRecord("run-1", {}, federation="f"), 1, PrivacySpec.from_dict(PRIVACY), ["a0"], 1)
    with pytest.raises(BudgetSpent):
        ledger.check_room("f", PrivacySpec.from_dict(PRIVACY), 1, 1)
    assert ledger.charges("f") == []
