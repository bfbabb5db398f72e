"""Differential privacy at commit: central mode's calibrated Gaussian noise on the mean of the
clipped changes, and the figures a private round reports (counts only, never norms).

Under central mode each update was folded with its clip factor as its weight (ingest), so the
accumulator holds sum(f_k d_k) / sum(f_k); times sum(f_k) / n it is the mean of the clipped
changes, and the noise N(0, (z C)^2) added to their sum is N(0, (z C / n)^2) on the mean.
"""

from __future__ import annotations

import numpy as np

from fedstream.aggregation import WeightedAccumulator
from fedstream.dp import add_noise, noise_generator
from fedstream.privacy import DPMode
from fedstream.rounds import RoundKind, RoundPlan, UpdateReport
from fedstream.tensors import TensorSpec


def is_private(plan: RoundPlan) -> bool:
    """Whether the round's updates are changes that every weigh the same or are masked:
    differential privacy (either mode) or secure aggregation."""
    return plan.privacy is not None or plan.secure_aggregation is not None


class CentralNoise:
    """Turns each piece of the accumulator's weighted mean of a central-mode round into the
    noised mean of the clipped changes (floating tensors only), piece by piece."""

    def __init__(self, plan: RoundPlan, accumulator: WeightedAccumulator) -> None:
        assert plan.privacy is not None and plan.privacy.mode is DPMode.CENTRAL
        n = accumulator.count
        self.scale = accumulator.total_weight / n
        self.std = plan.privacy.noise_multiplier * plan.privacy.clip_norm / n
        self.generator = noise_generator()

    def apply(self, spec: TensorSpec, mean: np.ndarray) -> np.ndarray:
        """The piece ``mean`` of a floating tensor, scaled and noised in place (returned)."""
        if not spec.dt.is_float:
            return mean
        mean *= mean.dtype.type(self.scale)
        add_noise(self.generator, mean, self.std)
        return mean


def central_noise(plan: RoundPlan, accumulator: WeightedAccumulator) -> CentralNoise | None:
    """The noise of a central-mode training round, None for any other round. Call before the
    accumulator's means are taken (it reads its total weight and count)."""
    if plan.privacy is None or plan.privacy.mode is not DPMode.CENTRAL:
        return None
    return CentralNoise(plan, accumulator)


def recorded(plan: RoundPlan, num_examples: int, metrics: dict[str, float]) -> tuple[int, dict[str, float]]:
    """What a counted update's report keeps of what its header declared: under differential
    privacy, in a training round, neither its example count (0) nor its metrics (none). Both
    are computed from the site's data and are not privatized, and the report travels on to the
    scheduler, its API and the version's lineage; no strategy needs them (every update weighs
    the same). Evaluation rounds keep their metrics: reporting them is what they are for."""
    if plan.privacy is None or plan.kind is not RoundKind.TRAIN:
        return num_examples, metrics
    return 0, {}


def privacy_figures(plan: RoundPlan, reports: list[UpdateReport]) -> dict[str, float]:
    """What a private round reports with its version: updates counted, and under central mode
    how many were clipped (their weight, the clip factor, is below 1). Empty without privacy."""
    if plan.privacy is None:
        return {}
    figures = {"dp_updates_counted": float(len(reports))}
    if plan.privacy.mode is DPMode.CENTRAL:
        figures["dp_updates_clipped"] = float(sum(1 for r in reports if r.weight < 1.0))
    return figures
