"""bench/secagg.py at its smallest: five agents, one dropping after sharing its keys, the round
committed and its figures printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_secure_aggregation_benchmark_runs_and_prints_its_figures():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "secagg.py"), "--agents", "5", "--elements", "10000", "--dropouts", "1"],
        capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "command: python bench/secagg.py --agents 5 --elements 10000 --dropouts 1" in done.stdout
    assert "round committed" in done.stdout and "4 self masks + 4 pairwise masks" in done.stdout
    assert "quantization error vs the float mean" in done.stdout
