"""Privacy settings every service shares: differential privacy (with a budget) and secure
aggregation, as a federation, a run spec, a round plan and an assignment carry them.

The arithmetic lives elsewhere: clipping and noise in ``fedstream.dp``, the accountant in
``fedstream.accounting``, the secure aggregation protocol in ``fedstream.secagg``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedstream.errors import InvalidArgument

# Bounds that keep a hostile or mistyped spec from asking for absurd work or meaningless figures.
MAX_NOISE_MULTIPLIER = 1e4
MAX_CLIP_NORM = 1e6
MAX_EPSILON_BUDGET = 1e4
MAX_STEP_TIMEOUT_S = 3600.0
# The most participants a secure aggregation round takes: every agent shares keys with every
# other (complete graph), so the aggregator relays n (n - 1) encrypted shares and each agent
# sends n - 1 of them in one message (gRPC's 4 MiB holds about 24,000).
MAX_SECURE_PARTICIPANTS = 1000


class DPMode(StrEnum):
    """Where an update's change is clipped and noised."""

    # The aggregator clips each update and noises the sum (trusting the aggregator).
    CENTRAL = "central"
    # Each agent clips and noises its own change before upload (trusting no one).
    LOCAL = "local"


def _finite_in(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"{name} must be a finite number in {bracket}{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class PrivacySpec:
    """Differential privacy of a federation's training rounds: each update's change clipped to
    ``clip_norm`` (L2 over every floating tensor that travels) and Gaussian noise of standard
    deviation ``noise_multiplier * clip_norm`` added, by the aggregator to the sum
    (``central``) or by each agent to its own change (``local``); the federation may spend at
    most ``epsilon_budget`` at ``delta`` over all its runs."""

    mode: DPMode
    clip_norm: float
    noise_multiplier: float
    epsilon_budget: float
    delta: float

    def check(self) -> PrivacySpec:
        """Returns itself; raises InvalidArgument naming the first setting out of range."""
        _finite_in("privacy.clip_norm", self.clip_norm, 0.0, MAX_CLIP_NORM, low_open=True)
        _finite_in("privacy.noise_multiplier", self.noise_multiplier, 0.0, MAX_NOISE_MULTIPLIER, low_open=True)
        _finite_in("privacy.epsilon_budget", self.epsilon_budget, 0.0, MAX_EPSILON_BUDGET, low_open=True)
        if not (math.isfinite(self.delta) and 0.0 < self.delta < 1.0):
            raise InvalidArgument(f"privacy.delta must be a number in (0, 1), got {self.delta!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacySpec:
        """From ``to_dict``'s form; raises InvalidArgument for an unknown mode or a missing or
        malformed setting (it does not check ranges: ``check`` does)."""
        name = str(d.get("mode") or "")
        try:
            mode = DPMode(name)
        except ValueError:
            known = ", ".join(m.value for m in DPMode)
            raise InvalidArgument(f"unknown privacy.mode {name!r}; known: {known}") from None
        try:
            return cls(
                mode=mode,
                clip_norm=float(d["clip_norm"]),
                noise_multiplier=float(d["noise_multiplier"]),
                epsilon_budget=float(d["epsilon_budget"]),
                delta=float(d["delta"]),
            )
        except KeyError as e:
            raise InvalidArgument(f"privacy.{e.args[0]} is required") from None
        except (TypeError, ValueError):
            raise InvalidArgument("privacy settings must be numbers") from None


@dataclass(frozen=True)
class SecureAggregationSpec:
    """Secure aggregation of a round's updates (Bonawitz et al., CCS 2017): the aggregator
    learns only their sum; the round commits while at most ``max_dropout`` of the participants
    that shared their keys drop out. Each coordinate of an update's weighted change is clipped
    to ``clip_range`` before it is quantized into the ring; each step of the protocol waits
    ``step_timeout_s`` for the participants."""

    max_dropout: float = 0.3
    clip_range: float = 1.0
    step_timeout_s: float = 60.0

    def check(self) -> SecureAggregationSpec:
        """Returns itself; raises InvalidArgument naming the first setting out of range."""
        if not (math.isfinite(self.max_dropout) and 0.0 <= self.max_dropout < 0.5):
            raise InvalidArgument(f"secure_aggregation.max_dropout must be in [0, 0.5), got {self.max_dropout!r}")
        _finite_in("secure_aggregation.clip_range", self.clip_range, 0.0, MAX_CLIP_NORM, low_open=True)
        _finite_in("secure_aggregation.step_timeout_s", self.step_timeout_s, 0.0, MAX_STEP_TIMEOUT_S, low_open=True)
        return self

    def threshold(self, participants: int) -> int:
        """The Shamir threshold of a round with this many participants: the survivors needed to
        unmask (more than half, so two disjoint sets of survivors cannot both unmask)."""
        return max(participants - math.floor(self.max_dropout * participants), participants // 2 + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"max_dropout": self.max_dropout, "clip_range": self.clip_range, "step_timeout_s": self.step_timeout_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecureAggregationSpec:
        """From ``to_dict``'s form, defaults for what is missing; raises InvalidArgument for a
        setting that is not a number (``check`` checks ranges)."""
        try:
            return cls(
                max_dropout=float(d.get("max_dropout", 0.3)),
                clip_range=float(d.get("clip_range", 1.0)),
                step_timeout_s=float(d.get("step_timeout_s", 60.0)),
            )
        except (TypeError, ValueError):
            raise InvalidArgument("secure_aggregation settings must be numbers") from None
