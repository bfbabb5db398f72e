"""The two strategy families and the hooks each declares: linear (folded) and robust (combined).

A linear strategy says how much each update weighs in the running fold (``weight``), what
agents are told to do locally (``configure``), how the round's weighted mean becomes the next
global tensor (``server_update``, called tensor by tensor, with the base tensor and the
strategy's persisted state when it declares it needs them) and whether a round ends with
server-side distillation (``distills``, ``distill_lr``). A robust strategy needs every update at
once: it may select updates from their pairwise distances (``select``, when it declares
``needs_distances``) and combines them coordinate by coordinate (``combine``). The arithmetic
lives in pure functions that the tests check against direct reference computations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedstream.errors import InvalidArgument
from fedstream.tensors import TensorSpec


class LocalTraining(TypedDict, total=False):
    """What a strategy asks of the agents' local training (fields of the assignment's
    training settings)."""

    # FedProx: weight of the proximal term in the local loss.
    proximal_mu: float
    # FedPav: only the tensors the task shares travel.
    shared_only: bool

# Learning rate of a distillation pass for strategies that do not choose one.
DEFAULT_DISTILL_LR = 5e-4


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def example_weight(num_examples: int) -> float:
    """An update's example count as its weight; raises InvalidArgument below one example."""
    if num_examples < 1:
        raise InvalidArgument("num_examples must be at least 1")
    return float(num_examples)


class LinearStrategy(ABC):
    """A strategy whose round result is a function of the weighted mean of the updates: the
    aggregator folds each update as it arrives. Subclasses set ``name`` and ``Params`` (a
    pydantic model) and override the hooks they change."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    # ``server_update`` is given the base tensor.
    needs_base: ClassVar[bool] = False
    # Per-tensor state kept beside each version between rounds (empty: none).
    state_slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        """The update's weight in the round's weighted mean; raises InvalidArgument when the
        update lacks what the strategy needs. Default: its example count (FedAvg)."""
        return example_weight(num_examples)

    def configure(self) -> LocalTraining:
        """Local-training settings sent to agents with each assignment (TrainingConfig fields:
        proximal_mu, shared_only)."""
        return LocalTraining()

    def distills(self, ordinal: int) -> bool:
        """Whether the run's ``ordinal``-th training round (from 1) ends with server-side
        knowledge distillation. Default: never."""
        return False

    def distill_lr(self) -> float:
        """The learning rate of a round's distillation pass."""
        return DEFAULT_DISTILL_LR

    def server_update(
        self,
        spec: TensorSpec,
        mean: np.ndarray,
        base: np.ndarray | None,
        state: dict[str, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The next global tensor from the round's weighted mean (flat, float accumulator
        dtype), the base tensor (same dtype, when ``needs_base``) and this tensor's state
        (``state_slots`` arrays, None in the first round). Default: the mean itself."""
        return mean, {}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump()}


class RobustStrategy(ABC):
    """A strategy that combines every update of a round at once, coordinate by coordinate
    (robust statistics): the aggregator keeps the updates and reads them back piece by piece.
    Subclasses set ``name`` and ``Params`` and implement ``combine``."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    # ``select`` is given the updates' pairwise squared distances (a first pass over them).
    needs_distances: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        """The weight recorded with an update (the statistic itself ignores it): its example
        count; raises InvalidArgument below one example."""
        return example_weight(num_examples)

    def configure(self) -> LocalTraining:
        """Local-training settings sent to agents: none."""
        return LocalTraining()

    def select(self, sq_dist: np.ndarray) -> list[int] | None:
        """Updates to combine, from their squared distances (agents, agents), when
        ``needs_distances``; None when all are."""
        return None

    @abstractmethod
    def combine(self, x: np.ndarray) -> np.ndarray:
        """The coordinate-wise statistic of x (agents, n)."""

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump()}


# What the registry holds and ``make_strategy`` builds.
Strategy = LinearStrategy | RobustStrategy
