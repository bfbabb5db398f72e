"""The state store's records: plain dataclasses that serialise to JSON, and the transition tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Allowed round transitions: open -> training -> aggregating -> committed, or failed.
ROUND_TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"training", "failed"}),
    "training": frozenset({"aggregating", "failed"}),
    "aggregating": frozenset({"committed", "failed"}),
    "committed": frozenset(),
    "failed": frozenset(),
}
TERMINAL_ROUND_STATES = frozenset({"committed", "failed"})
AGGREGATION_TRANSITIONS: dict[str, frozenset[str]] = {
    "training": frozenset({"aggregating", "failed"}),
    "aggregating": frozenset({"committed", "failed"}),
    "committed": frozenset(),
    "failed": frozenset(),
}


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


@dataclass
class RunRecord:
    run_id: str
    # The run's specification in protobuf JSON form (fedstream.v1.RunSpec).
    spec: dict[str, Any]
    state: str = "running"
    reason: str = ""
    latest_version: str = ""
    created_unix: float = 0.0
    finished_unix: float = 0.0
    # The federation the run belongs to; empty for a run started on its own.
    federation: str = ""
    # Who or what started it: "api", "grpc" or "schedule".
    trigger: str = ""


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


@dataclass
class TokenRecord:
    """An API bearer token, kept only as the SHA-256 of its secret."""

    token_id: str
    sha256: str
    role: str  # viewer, operator or admin
    name: str = ""
    created_unix: float = 0.0


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
    kind: str  # "init", "train" or "evaluate"
    state: str = "open"
    participants: list[str] = field(default_factory=list)
    base_version: str = ""
    version: str = ""
    reason: str = ""
    # One dict per counted update: agent_id, num_examples, metrics, bytes_received.
    reports: list[dict[str, Any]] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)
    started_unix: float = 0.0
    finished_unix: float = 0.0
    # What the round was opened with, so that another scheduler can open it again as it was.
    deadline_unix: float = 0.0
    min_updates: int = 0
    # An evaluation round's metrics, combined over its reports.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class AggregationRecord:
    """The aggregator's journal of one round: its plan and every update counted in it.

    An update is counted when it is added here (atomically, once per agent); its bytes are in
    the model store by then, so a restarted aggregator can fold them all again.
    """

    run_id: str
    round: int
    kind: str
    base_version: str
    participants: list[str]
    min_updates: int
    deadline_unix: float
    strategy: str = "fedavg"
    # The strategy's parameters as canonical JSON (sorted keys).
    strategy_params: str = "{}"
    compression: str = "none"
    state: str = "training"  # training, aggregating, committed, failed
    # agent_id -> report (num_examples, metrics, bytes_received), in the order counted.
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str = ""
    reason: str = ""
    # Which aggregator's journal this is: "" for a single or root aggregator, "leaf/<name>"
    # for a leaf, so that aggregators sharing one state store never share a record.
    journal: str = ""
    # The run's task, and whether the round ends with server-side distillation.
    task: str = ""
    distill: bool = False
    # A leaf's share of a hierarchical round: its sums go to the root instead of a version.
    partial: bool = False
