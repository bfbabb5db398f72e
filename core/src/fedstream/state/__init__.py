"""Shared state of the control plane: agents, runs, rounds, leases, idempotency records."""

from fedstream.state.base import (
    ROUND_TRANSITIONS,
    AgentRecord,
    AggregationRecord,
    EnrollmentTokenRecord,
    FederationRecord,
    RoundRecord,
    RunRecord,
    StateStore,
    TokenRecord,
)
from fedstream.state.memory import MemoryStateStore

__all__ = [
    "ROUND_TRANSITIONS",
    "AgentRecord",
    "EnrollmentTokenRecord",
    "AggregationRecord",
    "FederationRecord",
    "MemoryStateStore",
    "RoundRecord",
    "RunRecord",
    "StateStore",
    "TokenRecord",
]
