"""Differential privacy end to end, the services, three digits agents and the CLI as processes:
a federation under central DP runs two training rounds; each committed version's lineage and
model card carry its privacy and epsilon; the CLI's `federations privacy` and the scheduler's
fedstream_privacy_epsilon_spent gauge report the ledger's epsilon; then a budget with room for
one more round only: the next run commits one round and fails naming the budget, as `fedstream
runs get` shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedstream.accounting import Charge, epsilon
from fedstream.privacy import DPMode
from fedstream_testing.local import LocalFederation

TOKEN = "bootstrap-token-for-the-privacy-test"
FEDERATION = "private-digits"
PRIVACY = {"mode": "central", "clip_norm": 0.1, "noise_multiplier": 0.5, "epsilon_budget": 500.0, "delta": 1e-5}


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, **kw)

    def finished_run(self, run_id: str, fed: LocalFederation) -> dict[str, Any]:
        give_up = time.monotonic() + 180
        while (run := self("GET", f"/runs/{run_id}").json())["state"] == "running":
            assert time.monotonic() < give_up, f"run {run_id} still running:\n{fed.tail('scheduler')}"
            fed.check_alive()
            time.sleep(0.5)
        return run


def spent_gauge(fed: LocalFederation) -> float:
    text = httpx.get(f"http://{fed.metrics_address('scheduler')}/metrics", timeout=10).text
    [value] = [s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "fedstream_privacy_epsilon_spent" and s.labels.get("federation") == FEDERATION]
    return float(value)


def one_round_of_room(report: dict[str, Any], agents: int) -> tuple[float, float]:
    """A budget with room for exactly one more round selecting every one of ``agents`` sites,
    and the epsilon a second would reach: the accountant's own arithmetic."""
    charges = [Charge.from_dict({**c, "sites": ()}) for c in report["charges"]]
    more = [Charge("next", n, DPMode.CENTRAL, PRIVACY["noise_multiplier"], agents, agents) for n in (1, 2)]
    one, two = (epsilon([*charges, *more[:k]], PRIVACY["delta"]) for k in (1, 2))
    return (one + two) / 2, two


def test_central_privacy_is_reported_everywhere_and_an_exhausted_budget_fails_the_run(tmp_path):
    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "credentials.json")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "fedstream"), *args], capture_output=True, text=True,
                              timeout=120, env=env)

    with LocalFederation(tmp_path / "services") as fed:
        aggregator = fed.start_aggregator()
        scheduler = fed.start_scheduler(aggregator, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN})
        for i in range(3):
            fed.start_agent(f"site-{i}", scheduler, i, 3, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        api = Api(fed.api_url())
        env.update(FEDSTREAM_API=fed.api_url(), FEDSTREAM_TOKEN=TOKEN)
        spec = {"task": "digits", "rounds": 2, "min_agents": 3, "round_timeout_s": 120, "wait_for_agents_s": 120,
                "training": {"local_epochs": 1, "batch_size": 64, "seed": 1}, "privacy": PRIVACY}
        made = api("POST", "/federations", json={"federation_id": FEDERATION, "spec": spec})
        assert made.status_code == 201, made.text

        assert api("POST", f"/federations/{FEDERATION}/runs", json={"run_id": "dp-1"}).status_code == 201
        run = api.finished_run("dp-1", fed)
        report = api("GET", f"/federations/{FEDERATION}/privacy").json()
        shown = cli("federations", "privacy", FEDERATION, "--format", "json")
        gauge = spent_gauge(fed)
        train = [r for r in run["rounds"] if r["kind"] == "train"]
        lineages = [api("GET", f"/models/{r['version']}/lineage").json() for r in train]
        cards = [api("GET", f"/models/{r['version']}/card?format=markdown") for r in train]

        budget, second = one_round_of_room(report, agents=3)
        patched = api("PATCH", f"/federations/{FEDERATION}", json={"spec": {"privacy": {"epsilon_budget": budget}}})
        assert patched.status_code == 200, patched.text
        assert api("POST", f"/federations/{FEDERATION}/runs", json={"run_id": "dp-2"}).status_code == 201
        exhausted = api.finished_run("dp-2", fed)
        got = cli("runs", "get", "dp-2")

    assert run["state"] == "succeeded", run["reason"]
    assert [r["state"] for r in train] == ["committed", "committed"]
    assert report["spent"] > 0 and report["spent"] == pytest.approx(train[-1]["epsilon"])
    for r, lineage in zip(train, lineages, strict=True):
        privacy = lineage["privacy"]
        assert (privacy["mode"], privacy["clip_norm"], privacy["noise_multiplier"]) == ("central", 0.1, 0.5)
        assert privacy["epsilon"] == pytest.approx(r["epsilon"]) and privacy["epsilon"] > 0
        assert privacy["sampling"] == 1.0 and privacy["updates_counted"] == 3
    for card in cards:
        assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
        assert "- differential privacy: " in card.text and "epsilon\\=" in card.text
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["spent"] == pytest.approx(report["spent"])
    assert gauge == pytest.approx(report["spent"])

    assert exhausted["state"] == "failed"
    assert exhausted["reason"].startswith("privacy budget spent: epsilon would reach")
    assert f"> budget {budget:g} at delta 1e-05" in exhausted["reason"]
    assert f"would reach {second:.4g}" in exhausted["reason"]
    assert [(r["kind"], r["state"]) for r in exhausted["rounds"]][-1] == ("train", "committed")  # no round past it
    assert got.returncode == 0, got.stderr
    assert "run dp-2 failed: privacy budget spent" in got.stdout and f"budget {budget:g}" in got.stdout
