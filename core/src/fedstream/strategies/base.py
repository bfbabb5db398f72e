"""The strategy interface: a handful of hooks around pure functions.

A strategy says how much each update weighs in the running fold (``weight``), what agents are
told to do locally (``configure``), and how the round's weighted mean becomes the next global
tensor (``server_update``, called tensor by tensor, with the base tensor and the strategy's
persisted state when it declares it needs them). The arithmetic lives in pure functions that
the tests check against direct reference computations.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedstream.errors import InvalidArgument
from fedstream.tensors import TensorSpec


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy(ABC):
    """Subclasses set ``name`` and ``Params`` (a pydantic model), and override hooks."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    # Server update needs the base tensor / keeps per-tensor state between rounds.
    needs_base: ClassVar[bool] = False
    state_slots: ClassVar[tuple[str, ...]] = ()
    # Linear strategies fold updates as they arrive; the others (robust statistics) need
    # every update at once and implement select/combine instead.
    linear: ClassVar[bool] = True
    needs_distances: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def weight(self, num_examples: int, metrics: dict[str, float]) -> float:
        """The update's weight in the round's weighted mean; raises InvalidArgument when the
        update lacks what the strategy needs. Default: its example count (FedAvg)."""
        if num_examples < 1:
            raise InvalidArgument("num_examples must be at least 1")
        return float(num_examples)

    def configure(self) -> dict[str, float | bool]:
        """Local-training settings sent to agents with each assignment (TrainingConfig fields:
        proximal_mu, shared_only)."""
        return {}

    def distills(self, ordinal: int) -> bool:
        """Whether the run's ``ordinal``-th training round (from 1) ends with server-side
        knowledge distillation. Default: never."""
        return False

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
