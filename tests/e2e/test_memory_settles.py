"""The aggregator, as its own process, gives memory back once requests are over: after a round
of large uploads commits, and after a burst of refused and abandoned uploads, its resident
memory is back within a bound of its idle figure (the exact figures: bench/run.py settle). In
an asynchronous run its peak is O(model), whether 2 or 8 agents upload into its buffers."""

from __future__ import annotations

from pathlib import Path

from fedstream_testing.memory import buffered_peak, memory_after

MiB = 1 << 20
# Generous: the figures measured are a few MiB above idle (docs/benchmarks.md).
BOUND_OVER_MODEL = 1.5


def test_aggregator_memory_returns_near_idle_after_a_large_round_and_a_burst_of_refused_uploads(tmp_path: Path):
    figures = memory_after(tmp_path, agents=2, size=64 * MiB)
    idle, model = figures["idle"], figures["model"]
    bound = idle + BOUND_OVER_MODEL * model

    assert figures["round"] <= bound, f"after the round: {figures['round'] / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"
    assert figures["burst"] <= bound, f"after the burst: {figures['burst'] / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"


# Peak above idle while uploads stream into an asynchronous run's buffers: one accumulator, the
# version being committed and its base, and a few chunks and transport buffers per stream.
# Measured: 1.9x the model with 2 agents; each further agent uploading at once adds about a
# quarter of a 48 MiB model (gRPC's buffers of one stream, as in synchronous rounds), never a
# model's worth: an aggregator holding each agent's update in memory would add a whole one.
PEAK_OVER_MODEL = 3.0
PER_AGENT_OVER_MODEL = 0.5


def test_aggregator_peak_in_an_asynchronous_run_does_not_grow_with_the_agents(tmp_path: Path):
    size, updates = 48 * MiB, 8
    few = buffered_peak(tmp_path / "few", agents=2, updates=updates, size=size)
    many = buffered_peak(tmp_path / "many", agents=8, updates=updates, size=size)
    model = few["model"]
    above = {n: f["peak"] - f["idle"] for n, f in ((2, few), (8, many))}
    figures = ", ".join(f"{n} agents: {b / MiB:.0f} MiB above idle" for n, b in above.items())
    figures += f"; model {model / MiB:.0f} MiB"

    assert above[2] <= PEAK_OVER_MODEL * model, figures
    assert (above[8] - above[2]) / 6 <= PER_AGENT_OVER_MODEL * model, figures
