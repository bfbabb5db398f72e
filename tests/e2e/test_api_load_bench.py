"""bench/api_load.py at a small size: the scheduler in its own process, a burst of large
admin API requests refused or parsed as they should be, heartbeats answered throughout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_load_benchmark_runs_and_prints_its_figures():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "api_load.py"), "--seconds", "1", "--clients", "2"],
        capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "heartbeat delay under the burst" in done.stdout and "'413'" in done.stdout
    assert "Reproduce: .venv/bin/python bench/api_load.py" in done.stdout
