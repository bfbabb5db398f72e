"""Adaptive server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
FedAdagrad, FedYogi and FedAdam. The round's weighted mean minus the base model is the
pseudo-gradient; first and second moments persist with each model version, so a restarted
aggregator continues with the same moments."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedstream.strategies.base import LinearStrategy
from fedstream.tensors import TensorSpec


class ServerOptParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    eta: float = Field(0.01, gt=0, le=100, description="Server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="Decay of the first moment.")
    beta2: float = Field(0.99, ge=0, lt=1, description="Decay of the second moment (Adam, Yogi).")
    tau: float = Field(1e-3, gt=0, le=100, description="Adaptivity: added to sqrt(v); v starts at tau^2.")


def adaptive_step(
    kind: str,
    x: np.ndarray,
    delta: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    p: ServerOptParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One server step: returns (x + eta * m' / (sqrt(v') + tau), m', v'), in float64 whatever
    the inputs' dtype: the difference of two float32 values and its square always fit."""
    x, delta, m, v = (a.astype(np.float64, copy=False) for a in (x, delta, m, v))
    m = p.beta1 * m + (1 - p.beta1) * delta
    d2 = delta * delta
    if kind == "adagrad":
        v = v + d2
    elif kind == "yogi":
        v = v - (1 - p.beta2) * d2 * np.sign(v - d2)
    elif kind == "adam":
        v = p.beta2 * v + (1 - p.beta2) * d2
    else:
        raise ValueError(f"unknown adaptive optimizer {kind!r}")
    x = x + p.eta * m / (np.sqrt(v) + p.tau)
    return x, m, v


class _Adaptive(LinearStrategy):
    Params = ServerOptParams
    needs_base = True
    state_slots = ("m", "v")
    kind = ""

    def server_update(
        self,
        spec: TensorSpec,
        mean: np.ndarray,
        base: np.ndarray | None,
        state: dict[str, np.ndarray] | None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not spec.dt.is_float or base is None:
            return mean, {}  # counters and masks: plain average
        p = self.params
        assert isinstance(p, ServerOptParams)
        delta = mean.astype(np.float64) - base  # in float64: float32 extremes of opposite signs fit
        if state is None:
            m = np.zeros_like(delta)
            v = np.full_like(delta, p.tau * p.tau)
        else:
            m, v = state["m"], state["v"]
        x, m, v = adaptive_step(self.kind, base, delta, m, v, p)
        # Values past the storage dtype's range become infinities here, and the commit refuses
        # them naming the tensor (or its moment): the round fails, the base stays the latest.
        with np.errstate(over="ignore"):
            return x.astype(mean.dtype), {"m": m.astype(np.float32), "v": v.astype(np.float32)}


class FedAdagrad(_Adaptive):
    name = "fedadagrad"
    kind = "adagrad"


class FedYogi(_Adaptive):
    name = "fedyogi"
    kind = "yogi"


class FedAdam(_Adaptive):
    name = "fedadam"
    kind = "adam"
