"""The state store interface and its records.

Every implementation (in-process now, Redis next) passes the same contract tests. Records are
plain dataclasses that serialise to JSON; keys are scoped by the tenant the store was made for.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedstream.errors import AlreadyExists, FederationNotFound, NotFound

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


class StateStore(ABC):
    """What the control plane shares between processes and replicas.

    Methods are synchronous and short; each one is atomic on its own.
    """

    tenant: str

    # Agents.
    @abstractmethod
    def put_agent(self, agent: AgentRecord) -> None:
        """Creates or replaces an agent's record."""

    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord:
        """Raises AgentNotFound."""

    @abstractmethod
    def heartbeat(self, agent_id: str, now_unix: float) -> None:
        """Records a heartbeat; raises AgentNotFound for an agent never registered."""

    @abstractmethod
    def list_agents(self) -> list[AgentRecord]:
        """All registered agents, ordered by id."""

    @abstractmethod
    def update_agent(self, agent_id: str, mutate: Callable[[AgentRecord], AgentRecord]) -> AgentRecord:
        """Atomically replaces an agent's record by ``mutate(current)`` (retried if another
        writer got there first, so ``mutate`` must be pure; what it raises propagates and
        changes nothing). Raises AgentNotFound."""

    @abstractmethod
    def delete_agent(self, agent_id: str) -> None:
        """Removes an agent's record; raises AgentNotFound."""

    # Runs.
    @abstractmethod
    def create_run(self, run: RunRecord) -> None:
        """Raises AlreadyExists when the id is taken."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """Raises RunNotFound."""

    @abstractmethod
    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        """Sets fields of a run and returns it; raises RunNotFound."""

    @abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """All runs, oldest first."""

    # Rounds.
    @abstractmethod
    def create_round(self, rnd: RoundRecord) -> None:
        """Raises AlreadyExists when the run already has that round."""

    @abstractmethod
    def get_round(self, run_id: str, round_: int) -> RoundRecord:
        """Raises RoundNotFound."""

    @abstractmethod
    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        """The run's rounds by number."""

    @abstractmethod
    def transition_round(self, run_id: str, round_: int, to: str, **changes: Any) -> RoundRecord:
        """Moves a round to state ``to`` and sets ``changes``, atomically.

        Raises RoundNotFound, or InvalidTransition when ``to`` is not reachable from the round's
        current state (so of two racing callers, exactly one wins).
        """

    @abstractmethod
    def update_round(self, run_id: str, round_: int, **changes: Any) -> RoundRecord:
        """Sets fields of a round other than its state (progress); raises RoundNotFound."""

    # The aggregator's journal.
    @abstractmethod
    def create_aggregation(self, rec: AggregationRecord) -> None:
        """Raises AlreadyExists when the round has one in ``rec.journal``.

        Every journal method works within one journal (``journal``, "" by default): records of
        different journals never collide, and each lists only its own."""

    @abstractmethod
    def get_aggregation(self, run_id: str, round_: int, journal: str = "") -> AggregationRecord:
        """Raises RoundNotFound."""

    @abstractmethod
    def list_aggregations(self, journal: str = "") -> list[AggregationRecord]:
        """Every record of the journal that is neither committed nor failed."""

    @abstractmethod
    def count_update(
        self, run_id: str, round_: int, agent_id: str, report: dict[str, Any], journal: str = ""
    ) -> bool:
        """Adds an agent's update to a training round's journal, atomically; True when added,
        False when that agent's update was counted already. Raises RoundNotFound, or RoundNotOpen
        when the journal is past training."""

    @abstractmethod
    def set_aggregation_state(
        self, run_id: str, round_: int, state: str, journal: str = "", **changes: Any
    ) -> AggregationRecord:
        """Moves a journal to aggregating, committed or failed (never back); raises
        RoundNotFound or InvalidTransition."""

    # Idempotency records.
    @abstractmethod
    def mark_once(self, scope: str, key: str) -> bool:
        """Records ``key`` under ``scope``; True the first time, False ever after."""

    @abstractmethod
    def is_marked(self, scope: str, key: str) -> bool: ...

    # Documents: small JSON records of one kind, by id (federations, API tokens). Each backend
    # implements these primitives; the typed methods below are built on them.
    @abstractmethod
    def _doc_create(self, kind: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Stores the document unless one of that id exists; False when it does."""

    @abstractmethod
    def _doc_get(self, kind: str, doc_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _doc_list(self, kind: str) -> list[dict[str, Any]]:
        """Every document of the kind, by id."""

    @abstractmethod
    def _doc_update(
        self, kind: str, doc_id: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Atomically replaces the document by ``mutate(current)``; None when there is none."""

    @abstractmethod
    def _doc_delete(self, kind: str, doc_id: str) -> bool: ...

    # Federations.
    def create_federation(self, rec: FederationRecord) -> None:
        if not self._doc_create("federation", rec.federation_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"federation {rec.federation_id!r} already exists")

    def get_federation(self, federation_id: str) -> FederationRecord:
        doc = self._doc_get("federation", federation_id)
        if doc is None:
            raise FederationNotFound(f"federation {federation_id!r} not found")
        return FederationRecord(**doc)

    def list_federations(self) -> list[FederationRecord]:
        return [FederationRecord(**d) for d in self._doc_list("federation")]

    def update_federation(self, federation_id: str, **changes: Any) -> FederationRecord:
        doc = self._doc_update(
            "federation", federation_id,
            lambda d: dataclasses.asdict(dataclasses.replace(FederationRecord(**d), **changes)),
        )
        if doc is None:
            raise FederationNotFound(f"federation {federation_id!r} not found")
        return FederationRecord(**doc)

    def delete_federation(self, federation_id: str) -> None:
        if not self._doc_delete("federation", federation_id):
            raise FederationNotFound(f"federation {federation_id!r} not found")

    # API tokens, by their id (the secret's hash is a field: lookups by hash scan the tenant's
    # few tokens).
    def create_token(self, rec: TokenRecord) -> None:
        if not self._doc_create("token", rec.token_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"token {rec.token_id!r} already exists")

    def find_token(self, sha256: str) -> TokenRecord | None:
        for d in self._doc_list("token"):
            if d["sha256"] == sha256:
                return TokenRecord(**d)
        return None

    def list_tokens(self) -> list[TokenRecord]:
        return [TokenRecord(**d) for d in self._doc_list("token")]

    def delete_token(self, token_id: str) -> None:
        if not self._doc_delete("token", token_id):
            raise NotFound(f"token {token_id!r} not found")

    # Enrollment tokens, by id; using one deletes it, so it enrolls at most once.
    def create_enrollment_token(self, rec: EnrollmentTokenRecord) -> None:
        if not self._doc_create("enrollment", rec.token_id, dataclasses.asdict(rec)):
            raise AlreadyExists(f"enrollment token {rec.token_id!r} already exists")

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        return [EnrollmentTokenRecord(**d) for d in self._doc_list("enrollment")]

    def delete_enrollment_token(self, token_id: str) -> None:
        if not self._doc_delete("enrollment", token_id):
            raise NotFound(f"enrollment token {token_id!r} not found")

    def consume_enrollment_token(self, sha256: str) -> EnrollmentTokenRecord | None:
        """Takes the token whose secret hashes to ``sha256`` away and returns it; None when
        there is none (never made, already used, or deleted)."""
        for d in self._doc_list("enrollment"):
            if d["sha256"] == sha256:
                # Deleting is atomic: of two callers with the same secret, one gets True.
                return EnrollmentTokenRecord(**d) if self._doc_delete("enrollment", d["token_id"]) else None
        return None

    # Leases.
    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now_unix: float) -> bool:
        """Takes or renews a lease; False when another holder has it unexpired."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None: ...

    # Counters.
    @abstractmethod
    def incr(self, name: str, by: int = 1) -> int:
        """Adds to a counter and returns its new value."""
