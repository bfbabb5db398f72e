"""bench/scale.py at a small size: simulated agents over mutual TLS from worker processes,
a fan-out round and a run of rounds, every update counted once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_scale_benchmark_runs_and_counts_every_update_once(tmp_path):
    out = tmp_path / "scale.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--agents", "30", "--workers", "2", "--selected", "10",
         "--rounds", "2", "--hold", "1", "--heartbeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["connected"] == 30 and figures["rounds_ok"] is True
    assert figures["rounds_counted"] == [10, 10] and figures["agent_errors"] == 0 and figures["duplicates"] == 0
    assert 0 < figures["fanout_p50_ms"] <= figures["fanout_p99_ms"]
    assert "Reproduce: .venv/bin/python bench/scale.py" in done.stdout
