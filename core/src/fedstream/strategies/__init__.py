"""Aggregation strategies by name: an explicit registry, parameters validated by pydantic.

Two families (``fedstream.strategies.base``): ``LinearStrategy`` (folded as updates arrive) and
``RobustStrategy`` (every update combined at once). To add one, subclass either in a module of
your own and register it: ``REGISTRY["mine"] = Mine`` (see docs/strategies.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedstream.errors import InvalidArgument
from fedstream.strategies.base import LinearStrategy, RobustStrategy, Strategy
from fedstream.strategies.linear import CosineWeighted, FedAvg, FedPav, FedProx, Uniform
from fedstream.strategies.robust import Median, MultiKrum, TrimmedMean
from fedstream.strategies.server_opt import FedAdagrad, FedAdam, FedYogi

REGISTRY: dict[str, type[LinearStrategy] | type[RobustStrategy]] = {
    "fedavg": FedAvg,
    "uniform": Uniform,
    "fedprox": FedProx,
    "fedpav": FedPav,
    "cosine": CosineWeighted,
    "fedadagrad": FedAdagrad,
    "fedyogi": FedYogi,
    "fedadam": FedAdam,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "multi-krum": MultiKrum,
}
DEFAULT = "fedavg"


def make_strategy(name: str = "", params: dict[str, Any] | None = None) -> Strategy:
    """Builds a strategy from its name and parameters; raises InvalidArgument naming the
    unknown strategy or the offending parameter."""
    name = name or DEFAULT
    cls = REGISTRY.get(name)
    if cls is None:
        raise InvalidArgument(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        return cls(cls.Params.model_validate(params or {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise InvalidArgument(f"strategy {name!r}: {where}: {first['msg']}") from None


__all__ = ["DEFAULT", "REGISTRY", "LinearStrategy", "RobustStrategy", "Strategy", "make_strategy"]
