"""`fedstream local up|status|down` as processes: a control plane and two agents left running,
a federation run through the CLI against them, stopped with nothing left behind; and CLI
output into a pipe that closes early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fedstream_cli.local_deploy import Deployment, is_running

FEDSTREAM = str(Path(sys.executable).parent / "fedstream")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "cfg" / "credentials.json")}
    env.pop("FEDSTREAM_API", None)
    env.pop("FEDSTREAM_TOKEN", None)
    return env


def _into_closed_pipe(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs the CLI with its standard output a pipe whose reader has gone: its status and stderr."""
    proc = subprocess.Popen([FEDSTREAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=60), err


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    code, err = _into_closed_pipe(["pki", "init-ca", "--tenant", "t", "--out", str(tmp_path / "ca")])

    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""
    assert (tmp_path / "ca" / "ca.pem").exists()


def test_local_up_runs_a_federation_for_the_cli_and_down_leaves_nothing(tmp_path):
    env = _env(tmp_path)
    home = tmp_path / "local"

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FEDSTREAM, *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=tmp_path)

    up = cli("local", "up", "--dir", str(home), "--agents", "2", "--device", "cpu")
    deployment = Deployment.load(home)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert deployment is not None
        assert "fedstream federations create quickstart --task digits --rounds 3 --min-agents 2" in up.stdout
        assert f"fedstream local down --dir {home}" in up.stdout
        assert [p.name for p in deployment.processes] == ["aggregator", "scheduler", "site-0", "site-1"]
        assert all(is_running(p) for p in deployment.processes)
        assert (home / "admin-token").stat().st_mode & 0o077 == 0
        for name in ("aggregator", "scheduler", "site-0", "site-1"):
            assert (home / f"{name}.log").exists() and (home / f"{name}.pid").read_text().strip().isdigit()
        assert (home / "pki" / "ca" / "ca.pem").exists()
        for agent in ("site-0", "site-1"):
            assert (home / "agents" / agent / "enrollment-token").stat().st_mode & 0o777 == 0o600

        again = cli("local", "up", "--dir", str(home))
        assert again.returncode == 1 and "already up" in again.stderr and "local down" in again.stderr

        status = cli("local", "status", "--dir", str(home), "--format", "json")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {r["name"]: r for r in json.loads(status.stdout)["processes"]}
        assert all(r["state"] == "alive" for r in rows.values())
        assert rows["aggregator"]["health"] == "serving"
        assert rows["scheduler"]["health"] == "serving; admin API ok"
        assert rows["site-1"]["health"] == "alive, connected"
        assert set(rows["scheduler"]["ports"]) == {"grpc", "api", "enroll", "metrics"}

        # The CLI is logged in: a federation runs on the two agents.
        offered = cli("federations", "create", "other", "--task", "fedreid", "--require-offered-task")
        assert offered.returncode == 1
        assert "live agents offer digits (site-0, site-1)" in offered.stderr and "not created" in offered.stderr
        warned = cli("federations", "create", "later", "--task", "fedreid")
        assert warned.returncode == 0 and "warning: no live agent offers task 'fedreid'" in warned.stderr
        created = cli("federations", "create", "quickstart", "--task", "digits", "--rounds", "2", "--min-agents", "2",
                      "--evaluate-every", "2")
        assert created.returncode == 0 and "warning" not in created.stderr, created.stderr
        ran = cli("federations", "run", "quickstart", "--follow")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "succeeded; 2 rounds committed" in ran.stdout

        plotted = cli("plot", "quickstart", "-o", str(tmp_path / "q.png"), "--format", "json")
        assert plotted.returncode == 0, plotted.stderr
        plot = json.loads(plotted.stdout)
        assert "train_loss" in plot["training_metrics"] and "accuracy" in plot["evaluation_metrics"]
        assert "accuracy" not in plot["training_metrics"]

        code, err = _into_closed_pipe(["runs", "list", "--format", "json"], env)
        assert code == 141 and err == ""
        head = subprocess.run(["bash", "-c", f"{FEDSTREAM} runs list --format json | head -1"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert head.stdout == "[\n" and "Traceback" not in head.stderr
    finally:
        down = cli("local", "down", "--dir", str(home))

    assert down.returncode == 0, down.stderr
    for name in ("site-0", "site-1", "scheduler", "aggregator"):
        assert f"{name} (pid" in down.stdout and "stopped" in down.stdout
    assert deployment is not None and not any(is_running(p) for p in deployment.processes)
    assert not list(home.glob("*.pid"))
    assert "nothing to stop" in cli("local", "down", "--dir", str(home)).stdout
    stopped = cli("local", "status", "--dir", str(home), "--format", "json")
    assert stopped.returncode == 1
    assert {r["state"] for r in json.loads(stopped.stdout)["processes"]} == {"dead"}
