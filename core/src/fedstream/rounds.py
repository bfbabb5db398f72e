"""The round vocabulary every service shares: kinds, states and their transitions, plans and reports.

Kinds and states are string enums, so that what is stored (JSON in Redis, the journal) and
logged reads as words and compares equal to them. Their protobuf counterparts are converted in
one place, ``fedstream.convert``. Adding a round kind means: the proto enum, ``RoundKind``,
its line in ``fedstream.convert``, and the handlers whose behaviour differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedstream.privacy import PrivacySpec, SecureAggregationSpec
from fedstream.staleness import BufferSpec


class RoundKind(StrEnum):
    """What the participants of a round are asked to do."""

    # One agent builds the task's initial model and uploads it unchanged: version 0 of a run.
    INIT = "init"
    # Selected agents train from the base version and upload their weights.
    TRAIN = "train"
    # Selected agents evaluate the base version and upload only a report.
    EVALUATE = "evaluate"

    @property
    def uploads_model(self) -> bool:
        """Whether an update of this kind carries tensors (an evaluation carries a report only)."""
        return self is not RoundKind.EVALUATE

    @property
    def needs_base(self) -> bool:
        """Whether a round of this kind starts from a committed version."""
        return self is not RoundKind.INIT


class RoundState(StrEnum):
    """A round's state machine: open -> training -> aggregating -> committed, or failed, or
    cancelled (its run was cancelled: nothing is committed after the cancel)."""

    OPEN = "open"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RoundState.COMMITTED, RoundState.FAILED, RoundState.CANCELLED)

    def can_move_to(self, to: RoundState) -> bool:
        return to in ROUND_TRANSITIONS[self]


# The only moves a round makes. A round can fail, or be cancelled, from any state that is not
# terminal.
ROUND_TRANSITIONS: dict[RoundState, frozenset[RoundState]] = {
    RoundState.OPEN: frozenset({RoundState.TRAINING, RoundState.FAILED, RoundState.CANCELLED}),
    RoundState.TRAINING: frozenset({RoundState.AGGREGATING, RoundState.FAILED, RoundState.CANCELLED}),
    RoundState.AGGREGATING: frozenset({RoundState.COMMITTED, RoundState.FAILED, RoundState.CANCELLED}),
    RoundState.COMMITTED: frozenset(),
    RoundState.FAILED: frozenset(),
    RoundState.CANCELLED: frozenset(),
}

TERMINAL_ROUND_STATES = frozenset(s for s in RoundState if s.terminal)


class RunState(StrEnum):
    """A run's state: running until it succeeds, fails or is cancelled."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not RunState.RUNNING


TERMINAL_RUN_STATES = frozenset(s for s in RunState if s.terminal)


@dataclass(frozen=True)
class UpdateReport:
    """What one agent reported with a counted update.

    ``weight`` is the strategy's weight of the update (its example count for FedAvg); it
    stays inside the aggregator and its journal and does not travel on the wire, nor does
    ``base_version`` (the version a buffered asynchronous update was trained from; "" in a
    synchronous round, whose updates all start from its base). The provenance fields are what
    the agent reported of itself (``fedstream.provenance``), "" from agents that do not.
    """

    agent_id: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_received: int = 0
    weight: float = 0.0
    agent_version: str = ""
    task_version: str = ""
    data_fingerprint: str = ""
    base_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; the provenance fields and ``base_version`` only when set."""
        optional = {
            k: v for k, v in (
                ("agent_version", self.agent_version), ("task_version", self.task_version),
                ("data_fingerprint", self.data_fingerprint), ("base_version", self.base_version),
            ) if v
        }
        return {
            "agent_id": self.agent_id,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "bytes_received": self.bytes_received,
            "weight": self.weight,
            **optional,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UpdateReport:
        """From ``to_dict``'s form; records written before ``weight`` existed weigh their
        example count."""
        return cls(
            agent_id=str(d["agent_id"]),
            num_examples=int(d["num_examples"]),
            metrics={str(k): float(v) for k, v in d.get("metrics", {}).items()},
            bytes_received=int(d.get("bytes_received", 0)),
            weight=float(d.get("weight", d["num_examples"])),
            agent_version=str(d.get("agent_version", "")),
            task_version=str(d.get("task_version", "")),
            data_fingerprint=str(d.get("data_fingerprint", "")),
            base_version=str(d.get("base_version", "")),
        )


def canonical_params(params: dict[str, Any]) -> str:
    """A strategy's parameters as canonical JSON (sorted keys), so that equal plans compare equal."""
    return json.dumps(params, sort_keys=True)


@dataclass(frozen=True)
class RoundPlan:
    """What the scheduler opens on the aggregator: who takes part in which round, from which
    version, aggregated how. The aggregator's journal embeds it as it was opened."""

    run_id: str
    round: int
    kind: RoundKind
    base_version: str
    participants: tuple[str, ...]
    min_updates: int
    deadline_unix: float
    strategy: str = "fedavg"
    # The strategy's parameters as canonical JSON (``canonical_params``).
    strategy_params: str = "{}"
    compression: str = "none"
    # A leaf's share of a hierarchical round: its sums go to the root instead of a version.
    partial: bool = False
    # The run's task, and whether this round ends with server-side distillation.
    task: str = ""
    distill: bool = False
    # Over-selection: the round closes and commits as soon as this many updates are counted,
    # the other participants' work no longer needed; 0 waits for every participant.
    target_updates: int = 0

    @property
    def closes_at(self) -> int:
        """How many counted updates close the round before its deadline: ``target_updates``
        (at most the participants), or every participant when it is 0."""
        everyone = len(self.participants)
        return min(self.target_updates, everyone) if self.target_updates else everyone
    # A buffer of a buffered asynchronous run (fedstream.staleness); None: a synchronous round.
    buffer: BufferSpec | None = None
    # Differential privacy of a training round (fedstream.privacy); None: none.
    privacy: PrivacySpec | None = None
    # Secure aggregation of a training round (fedstream.privacy); None: plain uploads.
    secure_aggregation: SecureAggregationSpec | None = None
    # What the scheduler adds to the lineage of the version this round commits (a JSON object
    # as text, see fedstream.lineage); "" adds nothing. Not part of the plan's identity: a
    # scheduler that opens the round again (after a restart, an upgrade) opens the same round.
    lineage_context: str = field(default="", compare=False)

    def params(self) -> dict[str, Any]:
        value = json.loads(self.strategy_params)
        assert isinstance(value, dict)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "round": self.round,
            "kind": self.kind.value,
            "base_version": self.base_version,
            "participants": list(self.participants),
            "min_updates": self.min_updates,
            "deadline_unix": self.deadline_unix,
            "strategy": self.strategy,
            "strategy_params": self.strategy_params,
            "compression": self.compression,
            "partial": self.partial,
            "task": self.task,
            "distill": self.distill,
            "target_updates": self.target_updates,
            **({"buffer": self.buffer.to_dict()} if self.buffer is not None else {}),
            **({"privacy": self.privacy.to_dict()} if self.privacy is not None else {}),
            **({"secure_aggregation": self.secure_aggregation.to_dict()} if self.secure_aggregation is not None else {}),
            **({"lineage_context": self.lineage_context} if self.lineage_context else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundPlan:
        return cls(
            run_id=str(d["run_id"]),
            round=int(d["round"]),
            kind=RoundKind(d["kind"]),
            base_version=str(d.get("base_version", "")),
            participants=tuple(d.get("participants", ())),
            min_updates=int(d.get("min_updates", 0)),
            deadline_unix=float(d.get("deadline_unix", 0.0)),
            strategy=str(d.get("strategy", "fedavg")),
            strategy_params=str(d.get("strategy_params", "{}")),
            compression=str(d.get("compression", "none")),
            partial=bool(d.get("partial", False)),
            task=str(d.get("task", "")),
            distill=bool(d.get("distill", False)),
            target_updates=int(d.get("target_updates", 0)),
            buffer=BufferSpec.from_dict(d["buffer"]) if d.get("buffer") else None,
            privacy=PrivacySpec.from_dict(d["privacy"]) if d.get("privacy") else None,
            secure_aggregation=(
                SecureAggregationSpec.from_dict(d["secure_aggregation"]) if d.get("secure_aggregation") else None
            ),
            lineage_context=str(d.get("lineage_context", "")),
        )


@dataclass
class RoundSnapshot:
    """A round as the aggregator sees it, sent to its watchers after every change."""

    run_id: str
    round: int
    state: RoundState
    reports: list[UpdateReport]
    stragglers: list[str]
    version: str
    reason: str
    # An evaluation round's combined metrics, once committed.
    metrics: dict[str, float] = field(default_factory=dict)


def combine_metrics(reports: list[UpdateReport]) -> dict[str, float]:
    """Each metric's mean over the reports that carry it, weighted by their example counts."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for r in reports:
        n = float(r.num_examples)
        for name, value in r.metrics.items():
            sums[name] = sums.get(name, 0.0) + n * float(value)
            weights[name] = weights.get(name, 0.0) + n
    return {name: sums[name] / weights[name] for name in sorted(sums) if weights[name] > 0}


@dataclass(frozen=True)
class TrainingConfig:
    """How an agent trains locally: the run's training spec with its strategy's settings."""

    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    seed: int = 0
    no_op: bool = False
    compression: str = "none"
    # FedProx: weight of the proximal term in the local loss.
    proximal_mu: float = 0.0
    # FedPav: only the tensors the task shares travel.
    shared_only: bool = False
    # Buffered asynchronous runs: floating tensors travel as their change from the base version.
    upload_delta: bool = False
    # Differential privacy (local mode: the agent clips and noises its change; central mode
    # with secure aggregation: the agent clips it); None: none.
    privacy: PrivacySpec | None = None
    # Secure aggregation: the agent takes part in the key exchange and uploads its change
    # quantized and masked; None: plain uploads.
    secure_aggregation: SecureAggregationSpec | None = None


@dataclass(frozen=True)
class Assignment:
    """What the scheduler asks one agent to do in one round, and where."""

    run_id: str
    round: int
    kind: RoundKind
    task: str
    base_version: str
    model_endpoint: str
    upload_endpoint: str
    training: TrainingConfig
    deadline_unix: float
    # The chunk size to download and upload with; 0: the agent's own setting.
    chunk_bytes: int = 0
    # Under secure aggregation, the round's participants as the scheduler selected them: the
    # agent checks the aggregator's roster against them (they fix the threshold); else empty.
    participants: tuple[str, ...] = ()
