"""Shared state of the control plane: agents, runs, rounds, leases, idempotency records."""

from fedstream.state.base import (
    ROUND_TRANSITIONS,
    AgentRecord,
    RoundRecord,
    RunRecord,
    StateStore,
)
from fedstream.state.memory import MemoryStateStore

__all__ = [
    "ROUND_TRANSITIONS",
    "AgentRecord",
    "MemoryStateStore",
    "RoundRecord",
    "RunRecord",
    "StateStore",
]
