"""bench/privacy.py at its smallest: both tasks, both modes, no privacy and one budget, a couple of
rounds of a few simulated sites through the in-process aggregator; every configuration yields its
figures and the accountant's epsilon of the rounds run equals the budget the noise was calibrated
for (accuracy is the benchmark's to measure, never asserted here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_privacy_benchmark_gives_figures_for_every_budget_and_mode(tmp_path):
    out = tmp_path / "privacy.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "privacy.py"), "--tasks", "digits,fedreid-tiny", "--modes", "central,local",
         "--epsilons", "inf,8", "--rounds", "2", "--sites", "24", "--per-round", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["task"], r["mode"], r["target_epsilon"]) for r in rows] == [
        ("digits", "none", math.inf), ("digits", "central", 8.0), ("digits", "local", 8.0),
        ("fedreid-tiny", "none", math.inf), ("fedreid-tiny", "central", 8.0), ("fedreid-tiny", "local", 8.0),
    ]
    for r in rows:
        assert 0 <= r["final"] <= 1 and r["rounds"] == 2
        if r["mode"] != "none":
            assert r["noise_multiplier"] > 0
            assert r["epsilon_spent"] == pytest.approx(8.0, rel=1e-3)
    assert "reproduce with: .venv/bin/python bench/privacy.py --tasks digits,fedreid-tiny" in done.stdout
