"""Agents as processes over mutual TLS: a token made with the CLI, the agent's own key, a
renewal without anyone's help, revocation by deleting the agent, and a new token bringing it
back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

from fedstream.pki import read_peer
from fedstream_testing.local import LocalFederation
from fedstream_testing.support import wait_until

TOKEN = "bootstrap-token-for-the-enrollment-test"
# The conditions run the CLI: asked every 0.2 s.
wait = partial(wait_until, interval=0.2)


def test_an_agent_enrolls_with_a_cli_token_renews_alone_and_is_revoked_by_deletion(tmp_path):
    env = {**os.environ, "FEDSTREAM_API": "", "FEDSTREAM_TOKEN": TOKEN,
           "FEDSTREAM_CONFIG": str(tmp_path / "credentials.json")}
    fedstream = str(Path(sys.executable).parent / "fedstream")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([fedstream, *args], capture_output=True, text=True, timeout=300, env=env)

    with LocalFederation(tmp_path / "services") as fed:
        agg = fed.start_aggregator()
        # Certificates of 60 s: the agent renews 20 s after enrolling.
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN,
                                          "ENROLLMENT__CERT_LIFETIME_S": "60"})
        env["FEDSTREAM_API"] = fed.api_url()
        token_file = tmp_path / "token"
        made = cli("enrollment-tokens", "create", "--agent-id", "lyon", "--ttl", "600", "--output", str(token_file),
                   "--format", "json")
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["agent_id"] == "lyon" and token_file.read_text().startswith("fse_")
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        identity = tmp_path / "lyon-identity"
        fed.start_agent("lyon", "127.0.0.1:1", 0, 1, {  # settings of its own, as a site would have
            "SCHEDULER_ENDPOINT": sched, "DEVICE": "cpu", "CPU_THREADS": "1",
            "TLS__IDENTITY_DIR": str(identity), "TLS__ENROLLMENT_TOKEN_FILE": str(token_file),
            "TLS__ENROLL_ENDPOINT": fed.enroll_endpoint(sched),
        })

        wait(lambda: "lyon" in cli("agents", "list").stdout and " alive " in cli("agents", "list").stdout,
             60, fed.tail("lyon"))
        first = read_peer((identity / "cert.pem").read_bytes())
        assert (identity / "key.pem").stat().st_mode & 0o077 == 0
        assert cli("enrollment-tokens", "list", "--format", "json").stdout.strip() == "[]"  # used up
        wait(lambda: "certificate renewed" in fed.tail("lyon", 200), 60, fed.tail("lyon"))
        second = read_peer((identity / "cert.pem").read_bytes())
        assert second.serial != first.serial and second.not_after_unix > first.not_after_unix
        wait(lambda: json.loads(cli("agents", "list", "--format", "json").stdout)[0]["connected"], 30, fed.tail("lyon"))

        started = subprocess.run(
            [fedstream, "grpc", "run-start", "--scheduler", sched, "--task", "digits", "--rounds", "1", "--min-agents", "1", "--epochs", "1",
             "--run-id", "after-renewal", "--follow", "--identity", str(fed.pki / "operator")],
            capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr + fed.tail("lyon")

        assert cli("agents", "delete", "lyon").returncode == 0
        # Revoked: the agent sets its certificate aside, cannot enroll again with the used
        # token, and exits saying so (5), until an operator gives it a new token.
        agent = next(p for n, p in fed.procs if n == "lyon")
        assert agent.wait(60) == 5, fed.tail("lyon")
        log = fed.tail("lyon", 200)
        assert "refused this agent's certificate" in log and "enrollment refused" in log
        assert json.loads(cli("agents", "list", "--format", "json").stdout) == []
        assert (identity / "cert.pem.refused").exists() and not (identity / "cert.pem").exists()

        again = json.loads(cli("enrollment-tokens", "create", "--agent-id", "lyon", "--format", "json").stdout)
        token_file.write_text(again["token"])  # the operator's new token: the agent comes back
        fed.start_agent("lyon-again", "127.0.0.1:1", 0, 1, {
            "AGENT_ID": "lyon", "SCHEDULER_ENDPOINT": sched, "DEVICE": "cpu", "CPU_THREADS": "1",
            "TLS__IDENTITY_DIR": str(identity), "TLS__ENROLLMENT_TOKEN_FILE": str(token_file),
            "TLS__ENROLL_ENDPOINT": fed.enroll_endpoint(sched),
        })
        wait(lambda: " alive " in cli("agents", "list").stdout, 60, fed.tail("lyon-again"))
        assert read_peer((identity / "cert.pem").read_bytes()).serial not in (first.serial, second.serial)
