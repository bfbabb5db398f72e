"""The README's "Running the services yourself" recipe: every `fedstream` command of it runs as
written (the admin API at the port the test's scheduler bound instead of :8080) against the
services as processes, the agents enrolling with the tokens the recipe's commands wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from fedstream_testing.local import LocalFederation

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bootstrap-token-for-the-readme-recipe"


def recipe() -> tuple[list[str], list[str]]:
    """The recipe's CLI commands: those run once, and those of the per-site loop."""
    section = (ROOT / "README.md").read_text().split("## Running the services yourself", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    once, per_site, in_loop = [], [], False
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        in_loop = (in_loop or command.startswith("for i in")) and command != "done"
        if command.startswith("fedstream "):
            (per_site if in_loop else once).append(command)
    return once, per_site


def test_the_readme_recipe_runs_as_written(tmp_path):
    once, per_site = recipe()
    assert [c.split()[1] for c in once] == ["pki", "login", "federations", "federations", "models", "agents"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "admin-token").write_text(TOKEN + "\n")
    env = {**os.environ, "FEDSTREAM_CONFIG": str(tmp_path / "credentials.json"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FEDSTREAM_API", None)
    env.pop("FEDSTREAM_TOKEN", None)

    def sh(command: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=300,
                              env={**env, **extra})

    with LocalFederation(tmp_path / "services") as fed:
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN})
        api = fed.api_url().removesuffix("/api/v1")
        commands = [c.replace("http://localhost:8080", api) for c in once]
        setup, after = commands[:2], commands[2:]
        for command in setup:
            done = sh(command)
            assert done.returncode == 0, command + "\n" + done.stdout + done.stderr
        for i in range(2):
            for command in per_site:
                done = sh(command, i=str(i))
                assert done.returncode == 0, command + "\n" + done.stdout + done.stderr
            fed.start_agent(f"site-{i}", "127.0.0.1:1", i, 2, {
                "SCHEDULER_ENDPOINT": sched, "DEVICE": "cpu", "CPU_THREADS": "1",
                "TLS__IDENTITY_DIR": str(work / f"identity-{i}"),
                "TLS__ENROLLMENT_TOKEN_FILE": str(work / f"token-{i}"),
                "TLS__ENROLL_ENDPOINT": fed.enroll_endpoint(sched),
            })
        for command in after:
            done = sh(command)
            assert done.returncode == 0, command + "\n" + done.stdout + done.stderr + fed.tail("scheduler")

        assert (work / "ca" / "ca-key.pem").exists()
        with safe_open(str(work / "model.safetensors"), "np") as f:
            assert f.keys()
        fed.check_alive()
