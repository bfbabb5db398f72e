"""`fedstream-agent check` as a site runs it: the console script against the services as
processes over mutual TLS, every step passing; then with another tenant's CA, stopping at TLS
with exit code 7. The agent logs the same check at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedstream.pki import CertificateAuthority
from fedstream_testing.local import LocalFederation
from fedstream_testing.support import wait_until


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "fedstream-agent"
    return subprocess.run([str(script), "check", "--timeout", "10"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_check_passes_every_step_then_names_a_wrong_ca_and_the_agent_logs_it_at_start(tmp_path):
    with LocalFederation(tmp_path / "services") as fed:
        sched = fed.start_scheduler(fed.start_aggregator())
        token = tmp_path / "token"
        token.write_text(fed.enrollment_token(sched, "lyon"))
        site = {"FEDSTREAM_AGENT_AGENT_ID": "lyon", "FEDSTREAM_AGENT_SCHEDULER_ENDPOINT": sched,
                "FEDSTREAM_AGENT_TLS__CA_FILE": str(fed.pki / "ca" / "ca.pem"),
                "FEDSTREAM_AGENT_TLS__IDENTITY_DIR": str(tmp_path / "identity"),
                "FEDSTREAM_AGENT_TLS__ENROLLMENT_TOKEN_FILE": str(token),
                "FEDSTREAM_AGENT_TLS__ENROLL_ENDPOINT": fed.enroll_endpoint(sched)}
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(CertificateAuthority.create("other").cert_pem)

        passed = check(site)
        wrong_ca = check({**site, "FEDSTREAM_AGENT_TLS__CA_FILE": str(other_ca)})
        fed.start_agent("lyon", sched, 0, 1, {"TLS__IDENTITY_DIR": str(tmp_path / "identity"), "DEVICE": "cpu"})
        wait_until(lambda: "check: download" in fed.tail("lyon", 100), 120, fed.tail("lyon", 100))

    steps = [line.split()[0] for line in passed.stdout.splitlines()]
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert steps == ["dns", "dns", "tcp", "tcp", "tls", "tls", "identity", "register", "download"]
    assert all(" OK: " in line for line in passed.stdout.splitlines())
    assert wrong_ca.returncode == 7, wrong_ca.stdout + wrong_ca.stderr
    last = wrong_ca.stdout.splitlines()[-1]
    assert last.startswith("tls ") and f"FAILED: the server's certificate is not signed by the CA in {other_ca}" in last
    started = fed.tail("lyon", 100)
    assert "check: identity" in started and "check: register" in started
