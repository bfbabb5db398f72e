"""`fedstream grpc ...` against a control plane that is not where the command looks: it says which
option names another address."""

from __future__ import annotations

import subprocess
import sys

from fedstream_testing.servers import free_port


def test_an_unreachable_scheduler_is_named_with_the_option_that_moves_it():
    port = free_port()  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "fedstream_cli", "grpc", "run-get", "r1", "--plaintext",
                           "--scheduler", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr
    assert f"the scheduler is not reachable at 127.0.0.1:{port}" in done.stderr and "--scheduler HOST:PORT" in done.stderr
