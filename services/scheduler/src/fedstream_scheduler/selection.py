"""Which live agents take part in a round: how many (fraction, minimum, maximum), and which,
uniformly at random or preferring the agents likely to finish first (``selection.prefer_fast``)
with a share of the seats still drawn uniformly (``selection.fairness_floor``).

Every draw is seeded by the run's seed and the round, so that a run resumed by another
scheduler draws the same participants from the same live agents and speeds."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from fedstream.privacy import MAX_SECURE_PARTICIPANTS
from fedstream.rounds import RoundKind
from fedstream_scheduler.models import RunSpec


def selection_size(spec: RunSpec, live: int) -> int:
    """Participants of a training round among ``live`` agents: the fraction rounded up, at
    least min_agents, at most max_agents (when set), the live agents, and under secure
    aggregation MAX_SECURE_PARTICIPANTS."""
    want = max(spec.min_agents, math.ceil(spec.fraction * live - 1e-9))
    most = spec.max_agents or live
    if spec.secure_aggregation is not None:
        most = min(most, MAX_SECURE_PARTICIPANTS)
    return min(live, most, want)


def fair_seats(spec: RunSpec, seats: int) -> int:
    """How many of a prefer_fast round's ``seats`` are drawn uniformly: the fairness floor's
    share, rounded up."""
    return min(seats, math.ceil(spec.selection.fairness_floor * seats - 1e-9))


def select(
    spec: RunSpec, live: list[str], round_no: int, kind: RoundKind, speeds: Mapping[str, float] | None = None
) -> list[str]:
    """The round's participants, sorted: one for an init round, else ``selection_size``.

    Uniform draws use a generator seeded with the run's seed and the round. With
    ``selection.prefer_fast`` a training round gives ``fair_seats`` seats to agents drawn
    uniformly, then the rest to the others by their estimated seconds per round (``speeds``,
    fastest first; an agent without an estimate counts as fastest, so that a new agent is
    tried; ties keep the seeded draw's order)."""
    want = 1 if kind == RoundKind.INIT else selection_size(spec, len(live))
    rng = random.Random(f"{spec.training.seed}:{round_no}")
    if kind != RoundKind.TRAIN or not spec.selection.prefer_fast:
        return sorted(rng.sample(sorted(live), want))
    known = speeds or {}
    order = rng.sample(sorted(live), len(live))
    fair = fair_seats(spec, want)
    by_speed = sorted(order[fair:], key=lambda agent: known.get(agent, 0.0))  # stable: ties keep the draw's order
    return sorted(order[:fair] + by_speed[: want - fair])
