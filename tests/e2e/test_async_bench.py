"""bench/async.py at its smallest: three agents as processes (one slowed), one killed and
started again, each mode run for a few seconds; every mode yields evaluated versions and the
figures the table is made of (speed is the benchmark's to measure, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_async_benchmark_gives_figures_for_every_mode(tmp_path):
    out = tmp_path / "async.json"

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "async.py"), "--tasks", "digits", "--seeds", "1", "--budget-s", "8",
         "--slowdowns", "1,1,2", "--epochs", "1", "--drop-agent", "1", "--drop-at", "0.2", "--away-s", "1",
         "--target-updates", "2", "--buffer-size", "2", "--concurrency", "3", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())["tasks"]["digits"]
    assert figures["metric"] == "accuracy" and figures["budget_s"] == 8 and figures["target"] == 0.95
    for mode in ("sync", "over", "async"):
        (run,) = figures[mode]["runs"]
        assert run["versions"][0][0] == 0.0  # the initial version, at the clock's zero
        assert all(0 <= at <= 8 and 0 <= score <= 1 for at, score in run["versions"])
        assert run["final"] == run["versions"][-1][1]
        assert 0 < run["killed_at_s"] < run["restarted_at_s"]
        assert 0 <= figures[mode]["median_final"] <= 1
    for mode in ("over", "async"):
        assert set(figures[f"{mode}_vs_sync"]) == {"time_ratio", "time_ratio_text", "final_delta"}
    for mode in ("synchronous (all selected)", "over-selected synchronous", "buffered asynchronous"):
        assert f"| {mode} |" in done.stdout
    assert "reproduce with: .venv/bin/python bench/async.py --tasks digits" in done.stdout
