"""Typed run specifications, shared by every front end of the scheduler."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedstream.errors import InvalidArgument
from fedstream.privacy import (
    MAX_CLIP_NORM,
    MAX_EPSILON_BUDGET,
    MAX_NOISE_MULTIPLIER,
    MAX_STEP_TIMEOUT_S,
    DPMode,
    PrivacySpec,
    SecureAggregationSpec,
)
from fedstream.privacy_rules import check_combination
from fedstream.rounds import RoundKind
from fedstream.staleness import MAX_STALENESS_LIMIT, BufferSpec, StalenessFunction
from fedstream.strategies import LinearStrategy, Strategy

# The longest a round's deadline, or the wait for its agents, may be (a week). Every float of a
# spec is finite (allow_inf_nan=False) and bounded: a deadline must stay a usable timestamp.
MAX_WAIT_S = 7 * 86400.0


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    local_epochs: int = Field(1, ge=1, le=10_000, description="Local epochs per round.")
    batch_size: int = Field(32, ge=1, le=1_000_000, description="Local batch size.")
    learning_rate: float = Field(0.05, gt=0, le=100, description="Local learning rate.")
    seed: int = Field(0, ge=0, description="Seed for agents' initialisation and shuffling.")
    no_op: bool = Field(False, description="Agents return the base model without training.")
    compression: Literal["none", "float16", "bfloat16", "int8"] = Field(
        "none", description="How updates travel: as stored, narrowed floats, or int8 changes."
    )


class StrategySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("fedavg", description="Strategy name from the registry (fedstream.strategies).")
    params: dict[str, Any] = Field(default_factory=dict, description="The strategy's parameters.")


class SelectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prefer_fast: bool = Field(
        False, description="Fill a training round's seats with the agents likely to finish first, by each "
        "agent's measured time from assignment to counted update (a moving average per task).",
    )
    fairness_floor: float = Field(
        0.2, ge=0, le=1,
        description="With prefer_fast: the share of each round's seats (rounded up) drawn uniformly among "
        "all live agents, so that slow sites still take part.",
    )
class StalenessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    function: StalenessFunction = Field(
        StalenessFunction.POLYNOMIAL,
        description="How an update's weight falls with its staleness s (versions committed since its base): "
        "constant 1, polynomial (1+s)^-a, hinge 1 while s <= b then 1/(a(s-b)+1).",
    )
    a: float = Field(0.5, ge=0, le=1e6, description="The polynomial's exponent, or the hinge's slope.")
    b: float = Field(0.0, ge=0, le=1e6, description="The hinge's point: updates at most this stale weigh fully.")


class AsynchronousSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    buffer_size: int = Field(ge=1, le=100_000, description="Updates counted into each committed version (K).")
    concurrency: int = Field(ge=1, le=100_000, description="Agents training at once (C).")
    staleness: StalenessSpec = Field(default_factory=StalenessSpec, description="How staleness weighs updates.")
    max_staleness: int = Field(
        10, ge=0, le=MAX_STALENESS_LIMIT,
        description="Updates whose base is more than this many versions old are refused as stale.",
    )

    def buffer(self) -> BufferSpec:
        """The aggregator's view of these settings."""
        return BufferSpec.from_dict(self.model_dump(mode="json")).check()


class PrivacyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: DPMode = Field(
        description="central: the aggregator clips each update's change and noises the sum (trusting the "
        "aggregator); local: each agent clips and noises its own change before upload (trusting no one).",
    )
    clip_norm: float = Field(gt=0, le=MAX_CLIP_NORM, description="L2 bound C of each update's change.")
    noise_multiplier: float = Field(
        gt=0, le=MAX_NOISE_MULTIPLIER, description="z: the Gaussian noise's standard deviation is z x clip_norm."
    )
    epsilon_budget: float = Field(
        gt=0, le=MAX_EPSILON_BUDGET,
        description="The most epsilon the federation (or a run without one) may spend, over all its runs; a "
        "training round that would pass it is not opened and the run fails.",
    )
    delta: float = Field(gt=0, lt=1, description="The delta at which epsilon is reported and budgeted.")

    def spec(self) -> PrivacySpec:
        """The shared vocabulary's view of these settings."""
        return PrivacySpec(self.mode, self.clip_norm, self.noise_multiplier, self.epsilon_budget, self.delta).check()


class SecureAggregationModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_dropout: float = Field(
        0.3, ge=0, lt=0.5,
        description="Share of the participants that may drop out after the key exchange with the round still committing.",
    )
    clip_range: float = Field(
        1.0, gt=0, le=MAX_CLIP_NORM,
        description="Each coordinate of an update's weighted change is clipped to [-clip_range, clip_range] "
        "before it is quantized into the ring.",
    )
    step_timeout_s: float = Field(
        60.0, gt=0, le=MAX_STEP_TIMEOUT_S, description="Seconds each step of the protocol waits for the participants.",
    )

    def spec(self) -> SecureAggregationSpec:
        """The shared vocabulary's view of these settings."""
        return SecureAggregationSpec(self.max_dropout, self.clip_range, self.step_timeout_s).check()


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: str = Field(min_length=1, max_length=128, description="Task name from the registry.")
    rounds: int = Field(1, ge=1, le=1_000_000, description="Training rounds to commit.")
    min_agents: int = Field(1, ge=1, description="Alive agents needed before a round opens.")
    max_agents: int = Field(
        0, ge=0, description="Agents selected per round at most; 0 means no limit (under secure aggregation, "
        "1000 at most).",
    )
    fraction: float = Field(
        1.0, gt=0, le=1,
        description="Share of the live agents selected per round, rounded up; at least min_agents "
        "and at most max_agents.",
    )
    round_timeout_s: float = Field(300.0, gt=0, le=MAX_WAIT_S, description="Seconds until a round's deadline, at most a week.")
    min_updates: int = Field(
        0, ge=0, description="Updates needed to commit at the deadline; 0 means min_agents."
    )
    target_updates: int = Field(
        0, ge=0, le=1_000_000,
        description="Over-selection: a training round closes and commits as soon as this many updates are "
        "counted, and the other participants' work ends; 0 waits for every participant. At least min_updates, "
        "at most the agents a round can have (min_agents, or max_agents when larger).",
    )
    selection: SelectionSpec = Field(default_factory=SelectionSpec, description="How participants are chosen.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Local training.")
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="How updates are combined.")
    initial_version: str = Field("", description="Start from this version instead of an init round.")
    wait_for_agents_s: float = Field(
        60.0, ge=0, le=MAX_WAIT_S, description="Seconds to wait for min_agents before a round fails, at most a week."
    )
    evaluate_every: int = Field(
        0, ge=0, le=1_000_000,
        description="Federated evaluation of the version just committed after every this many "
        "training rounds, and after the last; 0 never.",
    )

    evaluate_only: bool = Field(
        False, description="Train nothing: one federated evaluation of initial_version."
    )
    asynchronous: AsynchronousSpec | None = Field(
        None,
        description="Buffered asynchronous aggregation (FedBuff) instead of synchronous rounds: agents "
        "train on the newest version without waiting for each other and a version is committed every "
        "buffer_size updates; rounds then counts versions. Unset: synchronous rounds.",
    )
    privacy: PrivacyModel | None = Field(
        None,
        description="Differential privacy of the training rounds (user-level: a site is a user), with an epsilon "
        "budget per federation that the scheduler's accountant enforces. Unset: none.",
    )
    secure_aggregation: SecureAggregationModel | None = Field(
        None,
        description="Secure aggregation (SecAgg, Bonawitz et al. 2017): the aggregator learns only the sum of "
        "a training round's updates, and the round commits while at most max_dropout of them drop out. Agents "
        "sign their keys with their TLS identities (against an aggregator that would substitute them): agents "
        "in plaintext development mode take no part. Unset: none.",
    )

    @model_validator(mode="after")
    def _evaluation_needs_a_version(self) -> RunSpec:
        if self.evaluate_only and not self.initial_version:
            raise ValueError("an evaluate_only run needs the initial_version to evaluate")
        return self

    @model_validator(mode="after")
    def _target_within_the_round(self) -> RunSpec:
        target = self.target_updates
        if not target:
            return self
        most = max(self.min_agents, self.max_agents)
        if target > most:
            raise ValueError(
                f"target_updates {target} exceeds the agents a round can have ({most}: min_agents, or "
                "max_agents when larger)"
            )
        if self.min_updates > target:
            raise ValueError(f"target_updates {target} is below min_updates {self.min_updates}")
        return self

    def round_updates(self, participants: int, kind: RoundKind) -> tuple[int, int]:
        """(min_updates, target_updates) of a round with ``participants``: min_updates, or
        min_agents (or target_updates when smaller) when 0, within the participants; the
        target of a training round within the participants, 0 (every participant) otherwise."""
        target = min(self.target_updates, participants) if kind is RoundKind.TRAIN else 0
        least = self.min_updates or (min(self.min_agents, target) if target else self.min_agents)
        return max(1, min(participants, least)), target

def check_asynchronous(spec: RunSpec, strategy: Strategy) -> None:
    """Raises InvalidArgument when an asynchronous run asks for what buffered aggregation does
    not do: a robust strategy, distillation or partial averaging, compressed updates, an
    evaluation-only run or evaluation rounds, or the over-selection of synchronous rounds."""
    if spec.asynchronous is None:
        return
    why = "invalid run spec: asynchronous runs"
    if not isinstance(strategy, LinearStrategy):
        raise InvalidArgument(
            f"{why} fold each update as it arrives: strategy {strategy.name!r} combines every update at once "
            "(use fedavg, fedprox, fedadam, fedyogi or fedadagrad)"
        )
    if strategy.configure().get("shared_only") or any(strategy.distills(i) for i in range(1, 101)):
        raise InvalidArgument(f"{why} do not take partial averaging or distillation (strategy {strategy.name!r})")
    if spec.training.compression != "none":
        raise InvalidArgument(f"{why} upload changes from their base: training.compression must be none")
    if spec.evaluate_only:
        raise InvalidArgument(f"{why} train: evaluate_only does not apply")
    if spec.evaluate_every:
        raise InvalidArgument(
            f"{why} do not pause for evaluation rounds: evaluate_every must be 0 (evaluate a committed "
            "version with an evaluate_only run of its own)"
        )
    if spec.target_updates or spec.selection.prefer_fast:
        raise InvalidArgument(
            f"{why} commit every buffer_size updates and keep concurrency agents training: target_updates "
            "and selection.prefer_fast are for synchronous rounds"
        )


def check_privacy(spec: RunSpec, strategy: Strategy) -> None:
    """Raises InvalidArgument, naming both settings, when differential privacy or secure
    aggregation is asked for with what it cannot work with (fedstream.privacy_rules: the rules
    the aggregator applies again to each round's plan)."""
    check_combination(
        strategy,
        spec.privacy.spec() if spec.privacy is not None else None,
        spec.secure_aggregation.spec() if spec.secure_aggregation is not None else None,
        compression=spec.training.compression,
        buffered=spec.asynchronous is not None,
        participants=max(spec.min_agents, spec.max_agents),
    )
