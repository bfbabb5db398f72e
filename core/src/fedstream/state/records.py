"""The state store's records: plain dataclasses, and the JSON form each backend stores them in.

Round kinds and states are the round vocabulary's string enums (``fedstream.rounds``), so the
JSON reads as it always did; its transitions are ``fedstream.rounds.ROUND_TRANSITIONS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedstream.errors import InvalidTransition
from fedstream.rounds import RoundKind, RoundPlan, RoundState, RunState, UpdateReport

R = TypeVar("R")


def from_doc(cls: type[R], doc: dict[str, Any], **extra: Any) -> R:
    """The record of ``cls`` stored as ``doc``, leaving out the fields it does not know: a record
    written by a newer release (a field added) still reads during a rolling upgrade."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in doc.items() if k in names}, **extra)


def round_state(value: RoundState | str) -> RoundState:
    """The state a round or journal is asked to move to; raises InvalidTransition for a word
    that names no round state."""
    try:
        return RoundState(value)
    except ValueError:
        raise InvalidTransition(f"unknown round state {value!r}") from None


@dataclass
class AgentRecord:
    agent_id: str
    labels: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    registered_unix: float = 0.0
    last_heartbeat_unix: float = 0.0
    disabled: bool = False
    # Serial numbers (hex) of the agent's current certificates, newest last: a certificate
    # not listed here is refused (revoked or replaced). Empty for agents of a plaintext
    # (development) control plane.
    cert_serials: list[str] = field(default_factory=list)
    enrolled_unix: float = 0.0
    # Task -> seconds this agent takes from an assignment to its counted update, a moving
    # average kept by the scheduler for speed-aware selection (fedstream_scheduler.speeds).
    speeds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str
    # The run's specification in protobuf JSON form (fedstream.v1.RunSpec).
    spec: dict[str, Any]
    state: RunState = RunState.RUNNING
    reason: str = ""
    latest_version: str = ""
    created_unix: float = 0.0
    finished_unix: float = 0.0
    # The federation the run belongs to; empty for a run started on its own.
    federation: str = ""
    # Who or what started it: "api", "grpc" or "schedule".
    trigger: str = ""
    # Who started it, in words: the API token ("token/<id> (<name>, <role>)"), the gRPC
    # caller's certificate, or the federation's schedule ("schedule/<federation>").
    started_by: str = ""

    def __post_init__(self) -> None:
        self.state = RunState(self.state)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a backend stores (the state as its word)."""
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        return from_doc(cls, d)


@dataclass
class FederationRecord:
    """A federation: what its runs train and how (a run specification), and when."""

    federation_id: str
    # The runs' specification (the scheduler's RunSpec fields).
    spec: dict[str, Any]
    description: str = ""
    # {"cron": "0 2 * * *", "timezone": "Europe/Paris", "missed": "skip" | "run_once"}; empty: none.
    schedule: dict[str, Any] = field(default_factory=dict)
    created_unix: float = 0.0
    updated_unix: float = 0.0
    # Release policy: {"channels": {name: {"admin_approvals", "site_approvals", "require"}}};
    # empty: no channel, so no release (fedstream_scheduler.site_policy).
    releases: dict[str, Any] = field(default_factory=dict)
    # Site-requested runs: {"mode": "auto" | "approve" | "refuse", "max_per_site_per_day"};
    # empty: refused.
    site_requests: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrivacyLedgerRecord:
    """The differential privacy a federation (or a run without one) has spent: one charge per
    training round opened under privacy, oldest first, each with the settings it ran with
    ({"run_id", "round", "mode", "noise_multiplier", "selected", "eligible", "sites",
    "epsilon", "delta", "charged_unix"}: the scheduler's accountant reads them)."""

    ledger_id: str
    charges: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TokenRecord:
    """An API bearer token, kept only as the SHA-256 of its secret."""

    token_id: str
    sha256: str
    role: str  # viewer, operator or admin
    name: str = ""
    created_unix: float = 0.0


@dataclass
class AuditEntry:
    """One operator action that changed state, as the audit log keeps it."""

    # What was done, one of ``fedstream.state.audit.AuditAction`` (e.g. "run.cancel").
    action: str
    # What it was done to, "<kind>/<id>" (e.g. "run/nightly-1", "agent/site-1").
    target: str
    # Who did it, "<kind>/<id>": "token/<token id>" over the admin API,
    # "certificate/<role>/<name>" over gRPC, "schedule/<federation>" for a cron run.
    actor: str
    # The actor's name (an API token's name) and role (viewer, operator, admin, service).
    actor_name: str = ""
    role: str = ""
    time_unix: float = 0.0
    # A few words more, when the action has them (a cancel's reason, a new token's role).
    detail: dict[str, str] = field(default_factory=dict)
    # Its place in the log, set by the store when appended (1, 2, ...).
    seq: int = 0


@dataclass
class EnrollmentTokenRecord:
    """A one-time agent enrollment token, kept only as the SHA-256 of its secret."""

    token_id: str
    sha256: str
    expires_unix: float
    # The agent id the token enrolls; empty lets the agent name itself.
    agent_id: str = ""
    name: str = ""
    created_unix: float = 0.0


@dataclass
class RoundRecord:
    run_id: str
    round: int
    kind: RoundKind
    state: RoundState = RoundState.OPEN
    participants: list[str] = field(default_factory=list)
    base_version: str = ""
    version: str = ""
    reason: str = ""
    # One report per counted update, as the aggregator reported it.
    reports: list[UpdateReport] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)
    started_unix: float = 0.0
    finished_unix: float = 0.0
    # What the round was opened with, so that another scheduler can open it again as it was.
    deadline_unix: float = 0.0
    min_updates: int = 0
    # Updates that close the round early (over-selection); 0: every participant's.
    target_updates: int = 0
    # An evaluation round's metrics, combined over its reports.
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = RoundKind(self.kind)
        self.state = RoundState(self.state)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a backend stores (kind and state as their words, reports as
        ``UpdateReport.to_dict``)."""
        reports = [r.to_dict() for r in self.reports]
        return {**dataclasses.asdict(self), "kind": self.kind.value, "state": self.state.value, "reports": reports}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        """From ``to_dict``'s form; reports stored without a weight weigh their example count."""
        return from_doc(cls, {**d, "reports": [UpdateReport.from_dict(r) for r in d.get("reports", [])]})


@dataclass
class AggregationRecord:
    """The aggregator's journal of one round: its plan and every update counted in it.

    An update is counted when it is added here (atomically, once per agent); its bytes are in
    the model store by then, so a restarted aggregator can fold them all again.
    """

    # The round's plan, as it was opened.
    plan: RoundPlan
    state: RoundState = RoundState.TRAINING  # training, aggregating, committed, failed, cancelled
    # agent_id -> report, in the order counted.
    reports: dict[str, UpdateReport] = field(default_factory=dict)
    version: str = ""
    reason: str = ""
    # Which aggregator's journal this is: "" for a single or root aggregator, "leaf/<name>"
    # for a leaf, so that aggregators sharing one state store never share a record.
    journal: str = ""

    def __post_init__(self) -> None:
        self.state = RoundState(self.state)

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    @property
    def round(self) -> int:
        return self.plan.round

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a backend stores: the plan under "plan", then the journal's own fields."""
        return {
            "plan": self.plan.to_dict(),
            "state": self.state.value,
            "reports": {agent: r.to_dict() for agent, r in self.reports.items()},
            "version": self.version,
            "reason": self.reason,
            "journal": self.journal,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AggregationRecord:
        """From ``to_dict``'s form, or from the flat form of records written before the plan
        was embedded (the plan's fields at the top level, beside the journal's)."""
        return cls(
            plan=RoundPlan.from_dict(d.get("plan", d)),
            state=RoundState(d.get("state", RoundState.TRAINING)),
            reports={str(agent): UpdateReport.from_dict(r) for agent, r in d.get("reports", {}).items()},
            version=str(d.get("version", "")),
            reason=str(d.get("reason", "")),
            journal=str(d.get("journal", "")),
        )


@dataclass
class ReleaseRecord:
    """A version proposed for a federation's release channel, with its approvals."""

    release_id: str
    federation_id: str
    channel: str
    version: str
    # proposed, then released or rejected; a released one becomes superseded by the next.
    state: str = "proposed"
    # The proposer, "<kind>/<id>" as the audit log names actors.
    proposed_by: str = ""
    proposed_unix: float = 0.0
    note: str = ""
    # {"kind": "admin" | "site", "id": actor or agent id, "name": ..., "unix": ...}, in order.
    approvals: list[dict[str, Any]] = field(default_factory=list)
    # What the channel's policy asked when it was proposed: {"admins", "sites", "require"}.
    needed: dict[str, Any] = field(default_factory=dict)
    decided_unix: float = 0.0
    # A rejection's reason, or what superseded it.
    reason: str = ""


@dataclass
class RunRequestRecord:
    """A run of a federation that one of its sites' agents asked for."""

    request_id: str
    federation_id: str
    agent_id: str
    reason: str = ""
    # pending (waiting for an operator), started, or denied.
    state: str = "pending"
    requested_unix: float = 0.0
    decided_unix: float = 0.0
    # Who decided: "policy/auto", or the operator as the audit log names actors.
    decided_by: str = ""
    run_id: str = ""
    deny_reason: str = ""
