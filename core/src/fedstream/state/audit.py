"""The audit log role of the state store: an append-only, bounded log of operator actions."""

from __future__ import annotations

from abc import abstractmethod
from enum import StrEnum
from typing import Protocol

from fedstream.state.records import AuditEntry

# Entries a store keeps by default; the oldest go first (setting ``state.audit_keep``).
DEFAULT_AUDIT_KEEP = 100_000


class AuditAction(StrEnum):
    """The operator actions the control plane records."""

    RUN_START = "run.start"
    RUN_CANCEL = "run.cancel"
    FEDERATION_CREATE = "federation.create"
    FEDERATION_UPDATE = "federation.update"
    FEDERATION_DELETE = "federation.delete"
    AGENT_DISABLE = "agent.disable"
    AGENT_ENABLE = "agent.enable"
    AGENT_DELETE = "agent.delete"
    TOKEN_CREATE = "token.create"
    TOKEN_DELETE = "token.delete"
    ENROLLMENT_TOKEN_CREATE = "enrollment_token.create"
    ENROLLMENT_TOKEN_DELETE = "enrollment_token.delete"
    MODEL_PIN = "model.pin"
    MODEL_UNPIN = "model.unpin"
    RELEASE_PROPOSE = "release.propose"
    RELEASE_APPROVE = "release.approve"
    RELEASE_REJECT = "release.reject"
    RELEASE_PUBLISH = "release.publish"
    RUN_REQUEST = "run_request.create"
    RUN_REQUEST_APPROVE = "run_request.approve"
    RUN_REQUEST_DENY = "run_request.deny"


class AuditLog(Protocol):
    """The tenant's audit log: entries are appended, never changed; the oldest are dropped
    beyond the store's ``audit_keep`` (the newest ``audit_keep`` are always kept).

    Two primitives, each atomic on its own; a backend implements both.
    """

    audit_keep: int

    @abstractmethod
    def append_audit(self, entry: AuditEntry) -> int:
        """Appends ``entry`` (its ``seq`` ignored) and returns its sequence number: 1 for the
        tenant's first, then each one more than the last ever handed out (never reused, even
        once old entries are dropped), so that of concurrent appends each gets its own. Drops
        the oldest entries beyond ``audit_keep``."""

    @abstractmethod
    def list_audit(self, after_seq: int = 0, limit: int = 100, action: str = "", actor: str = "") -> list[AuditEntry]:
        """Up to ``limit`` entries with a sequence number above ``after_seq``, oldest first,
        each with its ``seq`` set; only those whose action equals ``action`` and whose actor
        equals ``actor`` when given (filters skip entries, they never shorten a page that has
        more matches after it). A page shorter than ``limit`` is the last; the next page is
        ``after_seq`` = the last entry's seq."""
