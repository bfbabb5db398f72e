"""The aggregator's settings: environment variables prefixed FEDSTREAM_AGGREGATOR_."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedstream.aggregation import DEFAULT_ACCUMULATOR_MEMORY_BUDGET_BYTES
from fedstream.config import (
    ChunkSettings,
    GrpcServerSettings,
    LogSettings,
    StateSettings,
    StoreSettings,
    TenantSettings,
    TlsSettings,
)
from fedstream.events import MAX_REPORT_METRICS, MAX_REPORT_NAME_BYTES
from fedstream.metrics import MetricsSettings
from fedstream.tensors import DEFAULT_MIN_DOWNLOAD_CHUNK_BYTES, MAX_CHUNK_BYTES, MAX_NAME_LENGTH, MAX_TENSORS


class AggregatorGrpcSettings(GrpcServerSettings):
    """The aggregator's gRPC server: the shared settings, on port 50052 by default.

    The port's default belongs to the model, not to a default instance, so that setting any
    other ``GRPC__*`` variable keeps it (the environment builds the nested model from its class).
    """

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")


class AggregatorMetricsSettings(MetricsSettings):
    """The aggregator's /metrics: on port 9465 by default, beside the scheduler's 9464."""

    port: int = Field(
        9465, ge=0, le=65535,
        description="Metrics port (9465, beside the scheduler's 9464, so that both run on one machine); "
        "0 picks a free one.",
    )


class LeafSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(min_length=1, examples=["leaf-0:50052"], description="host:port where the root reaches this leaf.")
    public_endpoint: str = Field(
        "", description="host:port where agents reach this leaf; empty means endpoint."
    )


class DistillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_data: Path | None = Field(
        None,
        description="Directory of unlabeled public images for server-side knowledge distillation "
        "(FedPav's distill_every). Unset: rounds that ask for distillation are refused. Needs "
        "PyTorch in the aggregator (fedstream-aggregator[distill]).",
    )
    device: str = Field(
        "", pattern=r"^(|cpu|cuda(:[0-9]+)?)$",
        description="Where distillation runs: cpu, cuda or cuda:N; empty means CUDA when present.",
    )


class AggregatorLimits(BaseModel):
    """Per-agent limits; each one hit counts in fedstream_limit_hits_total{limit=...}."""

    model_config = ConfigDict(extra="forbid")

    max_update_bytes: int = Field(
        256 << 30, ge=1,
        description="Largest update (its declared layout's bytes) accepted in any round, refused from "
        "the header before any chunk (RESOURCE_EXHAUSTED). Below it, a round with a base model "
        "(training) takes at most that model's bytes plus an eighth plus 64 MiB, and refuses any "
        "layout that is not the round's model; an init round's model is bounded by this cap and by "
        "the spool directory's free space (its spool file is allocated from the header).",
    )
    chunks_per_s: float = Field(
        2000.0, ge=0,
        description="Chunks per second one agent may send (bursts of as many); faster streams are "
        "slowed down to it. 0: no limit.",
    )
    streams_per_agent: int = Field(
        4, ge=0, description="Downloads and uploads one agent may have open at once, counted from its "
        "certificate when a stream opens, before any message is read; more are refused "
        "(RESOURCE_EXHAUSTED). 0: no limit.",
    )
    max_metrics_per_report: int = Field(
        64, ge=1, le=MAX_REPORT_METRICS,
        description="Metrics one update or evaluation report may carry; more are refused from the "
        "header, before any chunk (INVALID_ARGUMENT).",
    )
    max_metric_name_bytes: int = Field(
        4096, ge=1, le=MAX_REPORT_NAME_BYTES,
        description="Bytes (UTF-8) of the metric names of one report, all together; more are "
        "refused from the header, before any chunk (INVALID_ARGUMENT). The most allowed keeps "
        "every report well inside one gRPC message.",
    )
    max_tensors: int = Field(
        20_000, ge=1, le=MAX_TENSORS,
        description="Tensors one upload's layout may declare; more are refused from the header, "
        "before the layout is parsed (INVALID_ARGUMENT).",
    )
    max_tensor_name_length: int = Field(
        512, ge=1, le=MAX_NAME_LENGTH,
        description="Characters of one tensor name in an upload's layout; longer are refused from "
        "the header, before the layout is parsed (INVALID_ARGUMENT).",
    )
    min_download_chunk_bytes: int = Field(
        DEFAULT_MIN_DOWNLOAD_CHUNK_BYTES, ge=1, le=MAX_CHUNK_BYTES,
        description="Smallest chunk a client may ask for in a download; smaller are refused "
        "(INVALID_ARGUMENT naming both limits), so no download costs a message per few bytes. "
        "A request for 0 gets the aggregator's own chunks.chunk_bytes.",
    )
    max_download_chunk_bytes: int = Field(
        MAX_CHUNK_BYTES, ge=1, le=MAX_CHUNK_BYTES,
        description="Largest chunk a client may ask for in a download (at most what fits below "
        "gRPC's 4 MiB message limit); larger are refused (INVALID_ARGUMENT naming both limits).",
    )
    control_threads: int = Field(
        4, ge=1,
        description="gRPC handler threads kept for health checks and round control: downloads and "
        "uploads of all agents together hold at most grpc.max_workers minus this many; more are refused "
        "(RESOURCE_EXHAUSTED, limit transfer_streams). Must be below grpc.max_workers.",
    )
    stream_idle_s: float = Field(
        60.0, ge=0, allow_inf_nan=False,
        description="An upload that sends nothing (no header, no chunk), or a download whose client takes "
        "nothing (its flow-control window stays full), for this many seconds is ended "
        "(DEADLINE_EXCEEDED) and its thread, slot and spool space freed. 0: never.",
    )
    partial_upload_ttl_s: float = Field(
        600.0, gt=0, allow_inf_nan=False,
        description="How long what a cut resumable upload left (its verified bytes in the spool "
        "directory) is kept for the agent to resume, counted from its last chunk; then it is deleted "
        "and the upload starts again from byte 0. A partial upload also goes when its round stops "
        "taking updates.",
    )
    partial_upload_max_bytes: int = Field(
        64 << 30, ge=0,
        description="Spool space that resumable uploads, streaming or cut and kept, may hold all "
        "together (each its update's declared bytes); a resumable upload that would pass it is refused "
        "from its header (RESOURCE_EXHAUSTED naming partial_upload_max_bytes) and retried by the agent. "
        "0: uploads are not resumable (a cut one starts again from byte 0).",
    )


class AggregatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEDSTREAM_AGGREGATOR_", env_nested_delimiter="__", extra="forbid"
    )

    tenant: TenantSettings = Field(default_factory=TenantSettings, description="Tenant.")
    grpc: AggregatorGrpcSettings = Field(default_factory=AggregatorGrpcSettings, description="gRPC server.")
    tls: TlsSettings = Field(
        default_factory=TlsSettings, description="Mutual TLS of gRPC (agents, scheduler, leaves)."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    metrics: AggregatorMetricsSettings = Field(
        default_factory=AggregatorMetricsSettings, description="Prometheus /metrics."
    )
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Model store.")
    chunks: ChunkSettings = Field(default_factory=ChunkSettings, description="Download chunks.")
    limits: AggregatorLimits = Field(default_factory=AggregatorLimits, description="Per-agent limits.")
    durable_updates: bool | None = Field(
        None,
        description="Keep each counted update in the model store until its round commits, so "
        "that a restarted aggregator can rebuild the round. Default: on with the sqlite and redis "
        "state backends (whose journal survives a restart), off with 'memory'.",
    )
    accumulator_memory_budget_bytes: int = Field(
        DEFAULT_ACCUMULATOR_MEMORY_BUDGET_BYTES, ge=0,
        description="A round's running sums (float32 for floating tensors, float64 for the others: "
        "twice a bfloat16 model's size) up to this many bytes are kept in memory; larger ones in a "
        "file of spool_dir (space allocated when the round opens), memory-mapped a window of a "
        "sixteenth of this budget (1-64 MiB) at a time, so that folding and committing hold about one "
        "window whatever the model's size. 0: always in a file.",
    )
    spool_dir: Path = Field(
        Path(tempfile.gettempdir()) / "fedstream-spool",
        description="Directory where incoming updates are spooled until verified and folded. Cut "
        "resumable uploads are kept under its partial/ folder: on a volume that outlives the process, "
        "they resume after a restart.",
        json_schema_extra={"doc_default": "fedstream-spool in the system's temporary directory ($TMPDIR, else /tmp)"},
    )
    name: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="This aggregator's name when several share one state store (each leaf of a "
        "hierarchical layout): its journal is kept apart under 'leaf/<name>'. Empty for a single "
        "or root aggregator.",
    )
    distill: DistillSettings = Field(
        default_factory=DistillSettings, description="Server-side knowledge distillation."
    )
    leaves: list[LeafSettings] = Field(
        default_factory=list,
        description="Makes this aggregator a root: each training round of a linear strategy is "
        "dealt round-robin among these leaf aggregators, which fold the updates; the root adds "
        "their sums and commits. JSON, e.g. "
        '\'[{"endpoint": "leaf-0:50052"}, {"endpoint": "leaf-1:50052"}]\'. Every aggregator of a '
        "layout must use the same model store.",
    )
