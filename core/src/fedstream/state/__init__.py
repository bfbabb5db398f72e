"""Shared state of the control plane: agents, runs, rounds, leases, idempotency records."""

from fedstream.state.base import (
    ROUND_TRANSITIONS,
    AgentRecord,
    AggregationRecord,
    RoundRecord,
    RunRecord,
    StateStore,
)
from fedstream.state.memory import MemoryStateStore

__all__ = [
    "ROUND_TRANSITIONS",
    "AgentRecord",
    "AggregationRecord",
    "MemoryStateStore",
    "RoundRecord",
    "RunRecord",
    "StateStore",
]
