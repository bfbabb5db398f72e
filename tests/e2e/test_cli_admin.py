"""The fedstream CLI over the REST admin API, against services as processes: log in, create a
federation, run it with progress shown, list and download its models, pin one, plot the run;
following a run across a scheduler restart."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from safetensors import safe_open

from fedstream_testing.local import LocalFederation

TOKEN = "bootstrap-token-for-the-cli-test"


def test_cli_drives_a_federation_through_the_admin_api(tmp_path):
    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "cfg" / "credentials.json")}
    env.pop("FEDSTREAM_API", None)
    env.pop("FEDSTREAM_TOKEN", None)
    fedstream = str(Path(sys.executable).parent / "fedstream")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fedstream, *args], capture_output=True, text=True, timeout=300, env=env)

    with LocalFederation(tmp_path / "services") as fed:
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN})
        for i in range(2):
            fed.start_agent(f"site-{i}", sched, i, 2, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        api = fed.api_url()

        refused = cli("login", "--api", api, "--token", "wrong-token")
        assert refused.returncode == 1 and "unauthenticated" in refused.stderr
        assert not (tmp_path / "cfg" / "credentials.json").exists()
        assert cli("runs", "list").returncode != 0  # not logged in: a clear message
        logged = cli("login", "--api", api.removesuffix("/api/v1"), "--token", TOKEN)
        assert logged.returncode == 0, logged.stderr
        creds = tmp_path / "cfg" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600

        created = cli("federations", "create", "digits", "--task", "digits", "--rounds", "2", "--min-agents", "2",
                      "--cron", "0 3 * * *", "--timezone", "Europe/Berlin", "--format", "json")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["schedule"]["timezone"] == "Europe/Berlin"
        assert "digits" in cli("federations", "list").stdout
        bad = cli("federations", "create", "Bad_Id", "--task", "digits")
        assert bad.returncode == 1 and "invalid_argument" in bad.stderr and "federation_id" in bad.stderr

        ran = cli("federations", "run", "digits", "--follow", "--run-id", "cli-run")
        assert ran.returncode == 0, ran.stdout + ran.stderr + fed.tail("scheduler")
        assert "run cli-run [" in ran.stderr and "2/2" in ran.stderr  # the progress bar
        assert "run cli-run succeeded" in ran.stdout and "train_loss" in ran.stdout

        runs = json.loads(cli("runs", "list", "--federation", "digits", "--format", "json").stdout)
        assert [r["run_id"] for r in runs] == ["cli-run"]
        models = json.loads(cli("models", "list", "digits", "--format", "json").stdout)
        assert [m["version"] for m in models] == ["cli-run/000000", "cli-run/000001", "cli-run/000002"]

        out = tmp_path / "m.safetensors"
        got = cli("models", "download", "cli-run/000002", "-o", str(out))
        assert got.returncode == 0 and "SHA-256 verified" in got.stdout, got.stderr
        assert "downloading cli-run/000002 [" in got.stderr
        with safe_open(str(out), "np") as f:
            assert set(f.keys()) == {t["name"] for t in models[2]["tensors"]}
        newest = cli("models", "download", "digits", "-o", str(tmp_path / "newest.safetensors"))
        assert newest.returncode == 0 and "cli-run/000002" in newest.stdout, newest.stderr
        assert (tmp_path / "newest.safetensors").read_bytes() == out.read_bytes()
        missing = cli("models", "download", "nope/000001", "-o", str(tmp_path / "x.safetensors"))
        assert missing.returncode == 1 and "model_not_found" in missing.stderr
        assert not (tmp_path / "x.safetensors").exists()

        assert "pinned" in cli("models", "pin", "cli-run/000001").stdout
        png = tmp_path / "run.png"
        plotted = cli("plot", "cli-run", "-o", str(png))
        assert plotted.returncode == 0, plotted.stderr
        assert png.read_bytes()[:4] == b"\x89PNG"
        fed.check_alive()


def test_login_waits_for_an_api_that_never_comes_then_says_where_it_looked(tmp_path):
    from fedstream_testing.servers import free_port

    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "credentials.json")}
    api = f"http://127.0.0.1:{free_port()}"
    fedstream = str(Path(sys.executable).parent / "fedstream")

    done = subprocess.run([fedstream, "login", "--api", api, "--token", TOKEN, "--wait", "1.5"],
                          capture_output=True, text=True, timeout=60, env=env)

    assert done.returncode == 1
    assert f"cannot reach the admin API at {api}/api/v1" in done.stderr
    assert not (tmp_path / "credentials.json").exists()


def test_following_a_run_survives_a_scheduler_restart(tmp_path):
    import signal

    import httpx

    from fedstream_testing.support import wait_until

    env = {**os.environ, "FEDSTREAM_API": "", "FEDSTREAM_TOKEN": TOKEN}
    fedstream = str(Path(sys.executable).parent / "fedstream")
    with LocalFederation(tmp_path / "services") as fed:
        agg = fed.start_aggregator()
        settings = {"HEARTBEAT_INTERVAL_S": "0.5", "RUN_LEASE_TTL_S": "2", "API__BOOTSTRAP_TOKEN": TOKEN}
        sched = fed.start_scheduler(agg, settings)
        for i in range(2):
            fed.start_agent(f"site-{i}", sched, i, 2, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        api = env["FEDSTREAM_API"] = fed.api_url()
        ports = {"GRPC__PORT": sched.rsplit(":", 1)[1], "API__PORT": api.split(":")[2].split("/")[0],
                 "ENROLLMENT__PORT": fed.enroll_endpoint(sched).rsplit(":", 1)[1]}
        created = subprocess.run([fedstream, "federations", "create", "digits", "--task", "digits", "--rounds", "4",
                                  "--min-agents", "2"], capture_output=True, text=True, timeout=60, env=env)
        assert created.returncode == 0, created.stderr
        follower = subprocess.Popen([fedstream, "federations", "run", "digits", "--follow", "--run-id", "restarted",
                                     "--reconnect-s", "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env)
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def committed() -> int:
            reply = httpx.get(f"{api}/runs/restarted", headers=headers, timeout=10)
            return int(reply.json()["rounds_committed"]) if reply.status_code == 200 else 0

        lines: list[str] = []

        def read_stderr() -> None:
            for line in follower.stderr:
                lines.append(line)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        try:
            wait_until(lambda: committed() >= 1, timeout=120, what="a round of the run committed")
            old = next(p for n, p in fed.procs if n == "scheduler")
            old.send_signal(signal.SIGTERM)
            assert old.wait(timeout=30) == 0
            # The scheduler comes back only once the follower has met the outage (it polls once a second).
            wait_until(lambda: any("admin API unreachable" in line for line in lines), timeout=60,
                       what="the follower to find the admin API gone")
            fed.start_scheduler(agg, {**settings, **ports}, name="scheduler-again")
            follower.wait(timeout=300)
            out = follower.stdout.read()
            reader.join(30)
            err = "".join(lines)
        finally:
            follower.kill()
        log = fed.tail("scheduler-again", 40)

    assert follower.returncode == 0, out + err + log
    assert "run restarted succeeded; 4 rounds committed" in out
    assert err.count("admin API unreachable: cannot reach the admin API") == 1 and "; reconnecting" in err
    assert "admin API reachable again" in err and "Traceback" not in err
    bars = [line for line in err.splitlines() if line.startswith("run restarted [")]
    done = [int(line.split("] ")[1].split("/")[0]) for line in bars]
    assert done == sorted(done) and done[-1] == 4  # progress resumed where it was
    assert all(a != b for a, b in itertools.pairwise(bars)), err  # no progress line shown twice over
    rounds = [line.split()[1] for line in out.splitlines() if line.startswith("  round")]
    assert rounds == sorted(set(rounds), key=int), out
