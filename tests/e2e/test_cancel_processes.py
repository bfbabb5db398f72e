"""Cancel means cancel, with the services as processes: `fedstream runs cancel` during a round
ends it at the aggregator (nothing committed, the agents' uploads refused), records it
cancelled, and `fedstream audit list` shows who did it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from fedstream.tensors import FlatBuffer
from fedstream_testing.local import LocalFederation
from fedstream_testing.sim_agent import SimAgent
from fedstream_testing.support import wait_until

TOKEN = "bootstrap-token-for-the-cancel-test"


def test_runs_cancel_abandons_the_round_and_is_audited(tmp_path: Path):
    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "cfg" / "credentials.json")}
    env.pop("FEDSTREAM_API", None)
    env.pop("FEDSTREAM_TOKEN", None)
    fedstream = str(Path(sys.executable).parent / "fedstream")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fedstream, *args], capture_output=True, text=True, timeout=120, env=env)

    gate, reached = threading.Event(), threading.Semaphore(0)

    def train(base: FlatBuffer, _a: object) -> FlatBuffer:
        reached.release()
        gate.wait(60)
        return base

    with LocalFederation(tmp_path / "services", tls=False) as fed:
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN})
        agents = [SimAgent(f"site-{i}", sched, update=train).start() for i in range(2)]
        try:
            assert cli("login", "--api", fed.api_url(), "--token", TOKEN).returncode == 0
            created = cli("federations", "create", "digits", "--task", "digits", "--rounds", "2", "--min-agents", "2")
            assert created.returncode == 0, created.stderr
            started = cli("federations", "run", "digits", "--run-id", "e2e-cancel")
            assert started.returncode == 0, started.stderr
            for _ in agents:  # both are training round 1
                assert reached.acquire(timeout=60), fed.tail("scheduler")

            cancelled = cli("runs", "cancel", "e2e-cancel", "--format", "json")

            gate.set()
            # Each agent's round 1 ends: its upload refused, or (on a slow machine) a heartbeat
            # told it of the cancel first and it never uploaded.
            wait_until(lambda: all(a.errors or a.not_needed for a in agents), timeout=30,
                       what="both agents' round 1 ended")
            run = json.loads(cli("runs", "get", "e2e-cancel", "--format", "json").stdout)
            models = json.loads(cli("models", "list", "digits", "--format", "json").stdout)
            audit = json.loads(cli("audit", "list", "--format", "json").stdout)
            table = cli("audit", "list", "--action", "run.cancel")
        finally:
            gate.set()
            for a in agents:
                a.stop()
        scheduler_log, aggregator_log = fed.tail("scheduler", 400), fed.tail("aggregator", 400)

    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    assert run["state"] == "cancelled" and run["reason"].startswith("cancelled by token/bootstrap")
    assert [(r["round"], r["state"]) for r in run["rounds"]] == [(0, "committed"), (1, "cancelled")]
    assert [m["version"] for m in models] == ["e2e-cancel/000000"]
    for a in agents:
        assert ("e2e-cancel", 1) not in a.done  # nothing of round 1 was counted
        assert (a.errors and "FAILED_PRECONDITION: round 1 of run 'e2e-cancel' was cancelled" in a.errors[0]) \
            or a.not_needed == [("e2e-cancel", 1, "heartbeat")], (a.errors, a.not_needed)
    assert [(e["action"], e["target"], e["actor"]) for e in audit] == [
        ("federation.create", "federation/digits", "token/bootstrap"),
        ("run.start", "run/e2e-cancel", "token/bootstrap"),
        ("run.cancel", "run/e2e-cancel", "token/bootstrap"),
    ]
    assert table.returncode == 0 and "run.cancel" in table.stdout and "federation.create" not in table.stdout
    assert "token/bootstrap (bootstrap, admin)" in table.stdout
    assert "audit: run.cancel run/e2e-cancel by token/bootstrap (bootstrap, admin)" in scheduler_log
    assert "round 1 of e2e-cancel cancelled" in aggregator_log
    assert "Traceback" not in aggregator_log and " ERROR " not in aggregator_log
