"""Strategies whose round result is a weighted mean of the updates: they fold as uploads
arrive, in memory of one model whatever the number of agents."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedstream.errors import InvalidArgument
from fedstream.strategies.base import LinearStrategy, LocalTraining


class FedAvg(LinearStrategy):
    """McMahan et al.: the mean of the agents' weights, weighted by their example counts."""

    name = "fedavg"


class Uniform(LinearStrategy):
    """Every update weighs the same, whatever its example count."""

    name = "uniform"

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        return 1.0


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    mu: float = Field(0.01, ge=0, le=10_000, description="Weight of the proximal term mu/2 * ||w - w_global||^2.")


class FedProx(LinearStrategy):
    """Li et al.: FedAvg on the server; agents add a proximal term to their local loss."""

    name = "fedprox"
    Params = FedProxParams

    def configure(self) -> LocalTraining:
        assert isinstance(self.params, FedProxParams)
        return {"proximal_mu": self.params.mu}


COSINE_METRIC = "cosine_distance"
MAX_COSINE_DISTANCE = 2.0


class CosineWeighted(LinearStrategy):
    """FedReID's cosine-distance weights: each agent reports d_k, the mean over one batch of
    1 - cos(logits before local training, logits after); updates weigh d_k / sum_j d_j."""

    name = "cosine"

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        return cosine_weight(self.name, metrics)


def cosine_weight(strategy: str, metrics: dict[str, float]) -> float:
    d = metrics.get(COSINE_METRIC)
    if d is None:
        raise InvalidArgument(f"strategy {strategy!r} needs the metric {COSINE_METRIC!r} with each update")
    # A mean of 1 - cos lies in (0, 2]: bounded weights keep the round's total weight finite.
    if not math.isfinite(d) or not 0 < d <= MAX_COSINE_DISTANCE:
        raise InvalidArgument(f"metric {COSINE_METRIC!r} must be in (0, {MAX_COSINE_DISTANCE:g}], got {d}")
    return float(d)


class FedPavParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weights: Literal["examples", "cosine"] = Field(
        "examples",
        description="What an update weighs: its training images, or FedReID's cosine distance "
        "(the agent's reported cosine_distance, normalised over the round).",
    )
    distill_every: int = Field(
        0,
        ge=0,
        description="Server-side knowledge distillation after every N-th training round (0: "
        "never): the aggregator regresses the average's embedding of its public set onto the "
        "mean embedding of the participants' models. Needs a task that supports it and an "
        "aggregator with a public set (FEDSTREAM_AGGREGATOR_DISTILL__PUBLIC_DATA).",
    )
    distill_lr: float = Field(5e-4, gt=0, le=1, description="Learning rate of the distillation pass (SGD).")


class FedPav(LinearStrategy):
    """FedReID's federated partial averaging: only the tensors a task shares (the backbone,
    BatchNorm statistics included) are uploaded and averaged, weighted by example count or by
    cosine distance; each site's private tensors (its identity classifier) never leave it."""

    name = "fedpav"
    Params = FedPavParams

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        assert isinstance(self.params, FedPavParams)
        if self.params.weights == "cosine":
            return cosine_weight(self.name, metrics)
        return super().weight(num_examples, metrics)

    def configure(self) -> LocalTraining:
        return {"shared_only": True}

    def distills(self, ordinal: int) -> bool:
        """Whether the run's ``ordinal``-th training round (from 1) ends with distillation."""
        assert isinstance(self.params, FedPavParams)
        every = self.params.distill_every
        return every > 0 and ordinal % every == 0

    def distill_lr(self) -> float:
        assert isinstance(self.params, FedPavParams)
        return self.params.distill_lr
