"""The audit trail of operator actions: who did what to which target, as one INFO log line and
an entry in the tenant's audit log (``fedstream.state.AuditLog``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedstream.errors import FedstreamError
from fedstream.pki import Identity
from fedstream.state import AuditAction, AuditEntry, AuditLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who acts: an API token, an operator's (or service's) certificate over gRPC, a schedule."""

    kind: str  # token, certificate, schedule or plaintext
    id: str
    name: str = ""
    role: str = ""

    @property
    def label(self) -> str:
        """The actor as the audit log names it: "<kind>/<id>"."""
        return f"{self.kind}/{self.id}"

    def describe(self) -> str:
        """The actor in words, for log lines and reasons: "token/tok-1 (ops, operator)"."""
        more = ", ".join(x for x in (self.name, self.role) if x)
        return f"{self.label} ({more})" if more else self.label

    @classmethod
    def of_identity(cls, identity: Identity | None) -> Actor:
        """The caller of a gRPC method, from its certificate (None: a plaintext server)."""
        if identity is None:
            return cls("plaintext", "unauthenticated")
        return cls("certificate", f"{identity.role}/{identity.name}", identity.name, identity.role)


# Runs a schedule starts, and in-process callers that act for nobody (tests, the demo).
SYSTEM = Actor("system", "scheduler")


class Auditor:
    """Records operator actions; a record the store refuses is logged, never raised (the action
    itself has happened)."""

    def __init__(self, store: AuditLog, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record(self, actor: Actor, action: AuditAction, target: str, **detail: str) -> None:
        """One INFO line ``audit: <action> <target> by <actor>`` and an audit log entry."""
        extra = "".join(f", {k} {v!r}" for k, v in sorted(detail.items()))
        log.info("audit: %s %s by %s%s", action.value, target, actor.describe(), extra)
        entry = AuditEntry(action.value, target, actor.label, actor.name, actor.role, self.clock(), dict(detail))
        try:
            self.store.append_audit(entry)
        except FedstreamError as e:
            log.warning("audit: cannot record %s %s in the audit log: %s", action.value, target, e.public)
