"""Robust statistics for untrusted agents: coordinate-wise median, trimmed mean and
multi-Krum (Blanchard et al. 2017). They need every update at once, so the aggregator keeps
the updates in the model store and computes piece by piece: memory is O(model + agents x
piece), not O(agents x model)."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedstream.errors import FailedPrecondition
from fedstream.strategies.base import RobustStrategy


def coordinate_median(x: np.ndarray) -> np.ndarray:
    """x: (agents, n) -> (n,); with an even number of agents, the mean of the two middle
    values, taken so that it cannot overflow."""
    k = x.shape[0]
    if k % 2:
        median: np.ndarray = np.median(x, axis=0)
        return median
    middle = np.partition(x, [k // 2 - 1, k // 2], axis=0)[k // 2 - 1 : k // 2 + 1]
    return finite_mean(middle)


def finite_mean(x: np.ndarray) -> np.ndarray:
    """The mean over axis 0 of x (agents, n) in x's dtype, finite for finite x: each row is
    divided by the number of rows before the sum, so no partial sum leaves the dtype's range."""
    k = x.shape[0]
    wide = np.float64 if x.dtype.itemsize < 8 else x.dtype  # float64 holds float32's sums whole
    total = np.sum(x.astype(wide, copy=False) / k, axis=0)
    big = np.finfo(x.dtype).max if x.dtype.kind == "f" else np.finfo(np.float64).max
    mean: np.ndarray = np.clip(total, -big, big).astype(x.dtype, copy=False)
    return mean


def trimmed_mean(x: np.ndarray, beta: float) -> np.ndarray:
    """Mean of each coordinate after dropping the floor(beta * agents) smallest and largest."""
    k = x.shape[0]
    cut = int(math.floor(beta * k))
    if cut == 0:
        return finite_mean(x)
    return finite_mean(np.sort(x, axis=0)[cut : k - cut])


def krum_scores(sq_dist: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each update: the sum of its squared distances to its k - f - 2 nearest
    other updates. sq_dist: (k, k) squared distances."""
    k = sq_dist.shape[0]
    nearest = k - f - 2
    scores = np.empty(k)
    for i in range(k):
        others = np.delete(sq_dist[i], i)
        scores[i] = np.sort(others)[:nearest].sum()
    return scores


def multi_krum_select(sq_dist: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the m updates with the lowest Krum scores (ties by index)."""
    scores = krum_scores(sq_dist, f)
    return sorted(np.argsort(scores, kind="stable")[:m].tolist())


def pairwise_sq_dist_update(acc: np.ndarray, x: np.ndarray) -> None:
    """Adds the squared distances between the rows of x (agents, n) to acc (agents, agents)."""
    x = x.astype(np.float64, copy=False)
    gram = x @ x.T
    norms = np.diag(gram)
    acc += np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


class Median(RobustStrategy):
    name = "median"

    def combine(self, x: np.ndarray) -> np.ndarray:
        return coordinate_median(x)


class TrimmedMeanParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    beta: float = Field(0.1, ge=0, lt=0.5, description="Fraction trimmed from each end, per coordinate.")


class TrimmedMean(RobustStrategy):
    name = "trimmed-mean"
    Params = TrimmedMeanParams

    def combine(self, x: np.ndarray) -> np.ndarray:
        assert isinstance(self.params, TrimmedMeanParams)
        return trimmed_mean(x, self.params.beta)


class MultiKrumParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    f: int = Field(1, ge=0, description="Byzantine agents tolerated: needs more than 2f + 2 updates.")
    m: int = Field(0, ge=0, description="Updates averaged; 0 means all but f.")


class MultiKrum(RobustStrategy):
    name = "multi-krum"
    Params = MultiKrumParams
    needs_distances = True

    def select(self, sq_dist: np.ndarray) -> list[int] | None:
        p = self.params
        assert isinstance(p, MultiKrumParams)
        k = sq_dist.shape[0]
        if k <= 2 * p.f + 2:
            raise FailedPrecondition(f"multi-krum with f={p.f} needs more than {2 * p.f + 2} updates, got {k}")
        if not np.isfinite(sq_dist).all():
            raise FailedPrecondition(
                "multi-krum: the updates' squared distances overflow float64 (float64 values beyond about 1e150)"
            )
        return multi_krum_select(sq_dist, p.f, min(k, p.m or k - p.f))

    def combine(self, x: np.ndarray) -> np.ndarray:
        return finite_mean(x)
