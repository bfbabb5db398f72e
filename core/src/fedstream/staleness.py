"""Buffered asynchronous aggregation (FedBuff): the staleness functions that weigh an update by
how many versions were committed since its base, and a buffer's settings as the aggregator and
the scheduler share them. Pure arithmetic, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedstream.errors import InvalidArgument

# The most versions an update's base may be behind and still count (bounds the base versions
# an asynchronous run keeps in use).
MAX_STALENESS_LIMIT = 1000


# The last name components of normalisation statistics (PyTorch's BatchNorm buffers). In a
# buffered asynchronous run they travel and average as values, never as changes from a base: a
# stale agent's change of a variance, measured from an older base and added to a newer one, can
# push the variance below zero (and every prediction to NaN).
STATISTICS = frozenset({"running_mean", "running_var"})


def is_statistic(name: str) -> bool:
    """Whether tensor ``name`` is a normalisation statistic (averaged as a value, not a change)."""
    return name.rsplit(".", 1)[-1] in STATISTICS


class StalenessFunction(StrEnum):
    """How an update's weight falls with its staleness s."""

    # Every update weighs the same, however stale.
    CONSTANT = "constant"
    # (1 + s)^-a.
    POLYNOMIAL = "polynomial"
    # 1 while s <= b, then 1 / (a (s - b) + 1).
    HINGE = "hinge"


def staleness_factor(function: StalenessFunction | str, s: int, a: float = 0.5, b: float = 0.0) -> float:
    """The factor an update of staleness ``s`` (>= 0) weighs by, in (0, 1]."""
    if s < 0:
        raise ValueError(f"staleness {s} is negative")
    fn = StalenessFunction(function)
    if fn is StalenessFunction.CONSTANT:
        return 1.0
    if fn is StalenessFunction.POLYNOMIAL:
        return float((1.0 + s) ** -a)
    return 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0)


@dataclass(frozen=True)
class BufferSpec:
    """A buffered asynchronous run's aggregation: a version every ``buffer_size`` updates,
    at most ``concurrency`` agents training at once, updates weighed by the staleness
    function and refused beyond ``max_staleness`` versions behind."""

    buffer_size: int
    concurrency: int
    function: StalenessFunction = StalenessFunction.POLYNOMIAL
    a: float = 0.5
    b: float = 0.0
    max_staleness: int = 10

    def factor(self, s: int) -> float:
        return staleness_factor(self.function, s, self.a, self.b)

    def check(self) -> BufferSpec:
        """Returns itself; raises InvalidArgument naming the first setting out of range."""
        if self.buffer_size < 1:
            raise InvalidArgument("asynchronous.buffer_size must be at least 1")
        if self.concurrency < 1:
            raise InvalidArgument("asynchronous.concurrency must be at least 1")
        if not 0 <= self.max_staleness <= MAX_STALENESS_LIMIT:
            raise InvalidArgument(f"asynchronous.max_staleness must be between 0 and {MAX_STALENESS_LIMIT}")
        for name, value in (("a", self.a), ("b", self.b)):
            if not math.isfinite(value) or value < 0 or value > 1e6:
                raise InvalidArgument(f"asynchronous.staleness.{name} must be a finite number between 0 and 1e6")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec's form (``asynchronous`` of a run spec, ``buffer`` of a plan)."""
        return {
            "buffer_size": self.buffer_size,
            "concurrency": self.concurrency,
            "staleness": {"function": self.function.value, "a": self.a, "b": self.b},
            "max_staleness": self.max_staleness,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BufferSpec:
        """From ``to_dict``'s form; raises InvalidArgument for an unknown function."""
        st = d.get("staleness") or {}
        name = str(st.get("function") or StalenessFunction.POLYNOMIAL.value)
        try:
            function = StalenessFunction(name)
        except ValueError:
            known = ", ".join(f.value for f in StalenessFunction)
            raise InvalidArgument(f"unknown staleness function {name!r}; known: {known}") from None
        return cls(
            buffer_size=int(d.get("buffer_size", 0)),
            concurrency=int(d.get("concurrency", 0)),
            function=function,
            a=float(st.get("a", 0.5)),
            b=float(st.get("b", 0.0)),
            max_staleness=int(d.get("max_staleness", 10)),
        )
