"""The state store: the union of its roles, which every backend implements.

The roles are narrow interfaces (``AgentRegistry``, ``RunStore``, ``AggregationJournal``,
``Documents``, ``Coordination``, ``AuditLog``, ``Health``), each with its own contract suite
run on every backend; code that needs one role can take just that role. Records are plain dataclasses that
serialise to JSON (``fedstream.state.records``); keys are scoped by the tenant the store was
made for.
"""

from __future__ import annotations

from fedstream.state.agents import AgentRegistry
from fedstream.state.audit import AuditLog
from fedstream.state.coordination import Coordination
from fedstream.state.documents import Documents
from fedstream.state.health import Health
from fedstream.state.journal import AggregationJournal
from fedstream.state.runs import RunStore

__all__ = ["StateStore"]


class StateStore(AgentRegistry, RunStore, AggregationJournal, Documents, Coordination, AuditLog, Health):
    """What the control plane shares between processes and replicas: every role at once.

    A backend subclasses this and implements each role's abstract methods. Methods are
    synchronous and short; each one is atomic on its own.
    """
