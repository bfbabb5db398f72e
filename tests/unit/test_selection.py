"""Which agents a round selects: how many (fraction, minimum and maximum together), and which
(uniformly, or the fastest with a fairness floor); a round's minimum and target of updates."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from fedstream.rounds import RoundKind
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.selection import fair_seats, select, selection_size
from fedstream_scheduler.speeds import blend, missed_sample


@pytest.mark.parametrize(
    ("fields", "live", "want"),
    [
        ({}, 7, 7),
        ({"fraction": 0.5}, 7, 4),
        ({"fraction": 0.5}, 8, 4),
        ({"fraction": 0.1, "min_agents": 3}, 10, 3),
        ({"fraction": 0.9, "max_agents": 5}, 10, 5),
        ({"fraction": 0.3, "min_agents": 2}, 1, 1),
        ({"max_agents": 2}, 6, 2),
        ({"secure_aggregation": {}}, 5000, 1000),  # every agent shares keys with every other
        ({"secure_aggregation": {}, "max_agents": 20}, 5000, 20),
    ],
)
def test_selection_size(fields, live, want):
    assert selection_size(RunSpec(task="digits", **fields), live) == want


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValidationError, match="fraction"):
        RunSpec(task="digits", fraction=fraction)


def agents(n: int) -> list[str]:
    return [f"site-{i:02d}" for i in range(n)]


def fast_first(spec: RunSpec, n: int) -> dict[str, float]:
    """Measured speeds: site-00 fastest, each next one a second slower."""
    return {a: 1.0 + i for i, a in enumerate(agents(n))}


def test_uniform_selection_is_the_seeded_draw_it_always_was():
    spec = RunSpec(task="digits", fraction=0.5, training={"seed": 7})
    live = agents(10)

    drawn = [select(spec, live, r, RoundKind.TRAIN) for r in range(1, 20)]

    assert drawn == [sorted(random.Random(f"7:{r}").sample(live, 5)) for r in range(1, 20)]
    assert drawn == [select(spec, list(reversed(live)), r, RoundKind.TRAIN, fast_first(spec, 10)) for r in range(1, 20)]


def test_prefer_fast_is_deterministic_given_the_seed_the_round_and_the_speeds():
    spec = RunSpec(task="digits", max_agents=4, selection={"prefer_fast": True}, training={"seed": 3})
    live, speeds = agents(12), fast_first(RunSpec(task="digits"), 12)

    first = [select(spec, live, r, RoundKind.TRAIN, speeds) for r in range(50)]
    again = [select(spec, list(reversed(live)), r, RoundKind.TRAIN, dict(reversed(speeds.items()))) for r in range(50)]
    other_seed = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": 4})})

    assert first == again
    assert first != [select(other_seed, live, r, RoundKind.TRAIN, speeds) for r in range(50)]


def test_prefer_fast_fills_the_seats_beyond_the_floor_with_the_fastest():
    spec = RunSpec(task="digits", max_agents=5, selection={"prefer_fast": True, "fairness_floor": 0.2})
    live, speeds = agents(20), fast_first(RunSpec(task="digits"), 20)

    drawn = [select(spec, live, r, RoundKind.TRAIN, speeds) for r in range(100)]

    assert fair_seats(spec, 5) == 1
    for chosen in drawn:  # one seat drawn uniformly, the four others the fastest of the rest
        assert len(chosen) == 5 and set(live[:4]) <= set(chosen)
    slow_seated = [c for c in drawn if not set(c) <= set(live[:5])]
    assert len(slow_seated) > 50  # the uniform seat lands beyond the five fastest 15 times in 20


def test_without_a_floor_prefer_fast_takes_exactly_the_fastest_and_tries_unmeasured_agents_first():
    spec = RunSpec(task="digits", max_agents=3, selection={"prefer_fast": True, "fairness_floor": 0.0})
    live = agents(8)
    speeds = {a: s for a, s in fast_first(spec, 8).items() if a != "site-07"}  # site-07 never measured

    for r in range(20):
        assert select(spec, live, r, RoundKind.TRAIN, speeds) == ["site-00", "site-01", "site-07"]


def test_the_fairness_floor_lets_every_slow_site_take_part_over_many_rounds():
    rounds, seats, n = 400, 4, 10
    spec = RunSpec(task="digits", max_agents=seats, selection={"prefer_fast": True, "fairness_floor": 0.25})
    live, speeds = agents(n), fast_first(spec, n)

    counts = Counter(a for r in range(rounds) for a in select(spec, live, r, RoundKind.TRAIN, speeds))

    # Each round one seat is drawn uniformly among the ten: every agent expects 40 of them.
    assert set(counts) == set(live)
    assert min(counts.values()) >= 20
    # The other three seats go to the fastest: they take part far more often.
    assert min(counts[a] for a in live[:3]) > 300


def test_init_and_evaluation_rounds_ignore_speeds():
    spec = RunSpec(task="digits", selection={"prefer_fast": True, "fairness_floor": 0.0}, max_agents=2)
    live, speeds = agents(6), fast_first(spec, 6)

    assert select(spec, live, 0, RoundKind.INIT, speeds) == select(spec, live, 0, RoundKind.INIT)
    assert select(spec, live, 5, RoundKind.EVALUATE, speeds) == select(spec, live, 5, RoundKind.EVALUATE)


@pytest.mark.parametrize(
    ("fields", "participants", "kind", "want"),
    [
        ({"min_agents": 4, "target_updates": 2}, 4, RoundKind.TRAIN, (2, 2)),
        ({"min_agents": 4, "target_updates": 3, "min_updates": 1}, 6, RoundKind.TRAIN, (1, 3)),
        ({"min_agents": 4, "target_updates": 4}, 3, RoundKind.TRAIN, (3, 3)),
        ({"min_agents": 4, "target_updates": 2}, 4, RoundKind.EVALUATE, (4, 0)),
        ({"min_agents": 2}, 5, RoundKind.TRAIN, (2, 0)),
    ],
)
def test_a_rounds_minimum_and_target(fields, participants, kind, want):
    assert RunSpec(task="digits", **fields).round_updates(participants, kind) == want


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_agents": 2, "target_updates": 3}, "target_updates 3 exceeds the agents a round can have (2"),
        ({"min_agents": 2, "max_agents": 6, "target_updates": 7}, "exceeds the agents a round can have (6"),
        ({"min_agents": 4, "target_updates": 2, "min_updates": 3}, "target_updates 2 is below min_updates 3"),
        ({"selection": {"fairness_floor": -0.1}}, "fairness_floor"),
        ({"selection": {"fairness_floor": float("nan")}}, "fairness_floor"),
    ],
)
def test_over_selection_specs_out_of_range_are_refused(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        RunSpec(task="digits", **fields)


def test_speeds_average_reports_and_push_missed_agents_above_the_round():
    assert blend(None, 10.0) == 10.0
    assert blend(10.0, 20.0) == 15.0
    # Missed a round that took 6 s: at least twice that, or what was known when more.
    assert missed_sample(None, 6.0) == 12.0
    assert missed_sample(30.0, 6.0) == 30.0
