"""Typed run specifications, shared by every front end of the scheduler."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: str = Field(min_length=1, max_length=128, description="Task name from the registry.")
    rounds: int = Field(1, ge=1, le=1_000_000, description="Training rounds to commit.")
    min_agents: int = Field(1, ge=1, description="Alive agents needed before a round opens.")
    max_agents: int = Field(0, ge=0, description="Agents selected per round at most; 0 means no limit.")
    fraction: float = Field(
        1.0, gt=0, le=1,
        description="Share of the live agents selected per round, rounded up; at least min_agents "
        "and at most max_agents.",
    )
    round_timeout_s: float = Field(300.0, gt=0, le=MAX_WAIT_S, description="Seconds until a round's deadline, at most a week.")
    min_updates: int = Field(
        0, ge=0, description="Updates needed to commit at the deadline; 0 means min_agents."
    )
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

    @model_validator(mode="after")
    def _evaluation_needs_a_version(self) -> RunSpec:
        if self.evaluate_only and not self.initial_version:
            raise ValueError("an evaluate_only run needs the initial_version to evaluate")
        return self
