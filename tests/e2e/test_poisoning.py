"""Poisoned updates end to end (bench/poisoning.py at CI size): honest digits agents and two
attackers through the services. Scaled updates wreck FedAvg and not the median; NaN updates
are refused at ingest, so the round goes on with the honest ones alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_robust_statistics_resist_poisoning_and_nan_is_refused(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "poisoning.py"), "--rounds", "3", "--round-timeout", "10",
         "--attacks", "scaled,nan", "--strategies", "fedavg,median", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    clean, table = figures["clean"], figures["table"]
    assert clean > 0.6
    assert table["fedavg"]["scaled"][0] < clean - 0.2  # FedAvg follows the attackers
    assert table["median"]["scaled"][0] > clean - 0.05 and table["median"]["scaled"][2] == ""  # the median does not
    # NaN never counts: both attackers refused in every round, and the honest FedAvg model is
    # the clean run's (same seeds, same honest updates; only the order the fold adds them in
    # differs, so float32 sums may differ in their last bits).
    assert table["fedavg"]["nan"][1] == 2 * 3
    assert abs(table["fedavg"]["nan"][0] - clean) <= 0.01
    assert "| median |" in done.stdout
