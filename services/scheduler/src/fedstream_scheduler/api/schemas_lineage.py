"""The admin API's bodies for model lineage and model cards (fedstream.lineage, fedstream_scheduler.cards)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LineageStrategy(BaseModel):
    name: str
    params: dict[str, Any]


class LineageTask(BaseModel):
    name: str
    version: str = Field(description="The task plug-in versions the participants reported; empty when none did.")


class LineageParticipant(BaseModel):
    agent_id: str
    examples: int
    metrics: dict[str, float]
    agent_version: str = Field(description="The agent's package version, as it reported it; empty when it did not.")
    task_version: str = Field(description="The agent's task plug-in, name@version.")
    data_fingerprint: str = Field(description="SHA-256 of the site's data set file list and sizes (never contents).")


class Lineage(BaseModel):
    """Where a version came from, as the aggregator recorded it when it committed the version,
    with the evaluations of the version recorded since."""

    schema_version: int
    version: str
    parents: list[str] = Field(description="The versions it was made from: none for an init round, the base "
                               "version, or a buffer's base and its updates' bases, newest first.")
    run_id: str
    round: int
    kind: str
    committed_unix: float
    federation_id: str
    started_by: str = Field(description="Who started the run: an API token, a certificate, or a schedule.")
    strategy: LineageStrategy
    compression: str
    distillation: dict[str, Any] | None = Field(description="Distillation's settings and figures; null without.")
    asynchronous: dict[str, Any] | None = Field(description="A buffered asynchronous run's buffer; null otherwise.")
    privacy: dict[str, Any] | None = Field(
        None, description="A training round under differential privacy: mode, clip_norm, noise_multiplier, delta, "
        "epsilon_budget, sampling (selected / eligible sites) and epsilon (the federation's, once the round was "
        "charged); null otherwise.",
    )
    training: dict[str, Any] | None = Field(description="The run's local training settings.")
    selection: dict[str, Any] | None = Field(description="How the run selected participants.")
    task: LineageTask
    participants: list[LineageParticipant] = Field(description="The counted updates.")
    stragglers: list[str] = Field(description="Selected participants whose updates were not counted.")
    code: dict[str, dict[str, str]] = Field(description="Package versions of the aggregator and the scheduler.")
    evaluations: dict[str, dict[str, Any]] = Field(description="Federated evaluations of the version, by name.")


class LineageNode(BaseModel):
    version: str
    run_id: str
    round: int
    kind: str
    committed_unix: float
    federation_id: str
    parents: list[str]
    participants: int
    examples: int
    missing: bool = Field(description="Its lineage is not there: deleted by retention, or committed before "
                          "lineages were recorded.")


class LineageEdge(BaseModel):
    parent: str
    child: str


class LineageGraph(BaseModel):
    version: str
    depth: int
    nodes: list[LineageNode]
    edges: list[LineageEdge]


class LineagePath(BaseModel):
    ancestor: str
    descendant: str
    versions: list[LineageNode] = Field(description="The versions on the parent path, ancestor first.")
    training_rounds: int = Field(description="Training rounds that committed the versions after the ancestor.")
