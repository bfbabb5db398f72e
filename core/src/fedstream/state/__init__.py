"""Shared state of the control plane: agents, runs, rounds, journals, documents, leases, the audit log."""

from fedstream.rounds import ROUND_TRANSITIONS
from fedstream.state.agents import AgentRegistry
from fedstream.state.audit import AuditAction, AuditLog
from fedstream.state.base import StateStore
from fedstream.state.coordination import Coordination
from fedstream.state.documents import Documents
from fedstream.state.health import Health
from fedstream.state.journal import AggregationJournal
from fedstream.state.memory import MemoryStateStore
from fedstream.state.records import (
    AgentRecord,
    AggregationRecord,
    AuditEntry,
    EnrollmentTokenRecord,
    FederationRecord,
    PrivacyLedgerRecord,
    ReleaseRecord,
    RoundRecord,
    RunRecord,
    RunRequestRecord,
    TokenRecord,
)
from fedstream.state.runs import RunStore
from fedstream.state.sqlite import SQLiteStateStore

__all__ = [
    "ROUND_TRANSITIONS",
    "AgentRecord",
    "AgentRegistry",
    "AggregationJournal",
    "AggregationRecord",
    "AuditAction",
    "AuditEntry",
    "AuditLog",
    "Coordination",
    "Documents",
    "EnrollmentTokenRecord",
    "FederationRecord",
    "Health",
    "MemoryStateStore",
    "PrivacyLedgerRecord",
    "ReleaseRecord",
    "RoundRecord",
    "RunRecord",
    "RunRequestRecord",
    "RunStore",
    "SQLiteStateStore",
    "StateStore",
    "TokenRecord",
]
