"""The aggregator, as its own process, gives memory back once requests are over: after a round
of large uploads commits, and after a burst of refused and abandoned uploads, its resident
memory is back within a bound of its idle figure (the exact figures: bench/run.py settle)."""

from __future__ import annotations

from pathlib import Path

from fedstream_testing.memory import memory_after

MiB = 1 << 20
# Generous: the figures measured are a few MiB above idle (docs/benchmarks.md).
BOUND_OVER_MODEL = 1.5


def test_aggregator_memory_returns_near_idle_after_a_large_round_and_a_burst_of_refused_uploads(tmp_path: Path):
    figures = memory_after(tmp_path, agents=2, size=64 * MiB)
    idle, model = figures["idle"], figures["model"]
    bound = idle + BOUND_OVER_MODEL * model

    assert figures["round"] <= bound, f"after the round: {figures['round'] / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"
    assert figures["burst"] <= bound, f"after the burst: {figures['burst'] / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"
