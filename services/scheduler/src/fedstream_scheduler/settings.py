"""The scheduler's settings: environment variables prefixed FEDSTREAM_SCHEDULER_."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedstream.config import (
    GrpcServerSettings,
    LogSettings,
    StateSettings,
    StoreSettings,
    TenantSettings,
    TlsSettings,
)
from fedstream.metrics import MetricsSettings


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the REST admin API.")
    host: str = Field(
        "127.0.0.1", description="Address the admin API binds to: loopback by default; 0.0.0.0 for every "
        "interface (the Helm chart sets it, behind its ingress).",
    )
    port: int = Field(8080, ge=0, le=65535, description="Admin API port; 0 picks a free one.")
    port_file: Path | None = Field(None, description="If set, the bound port is written here.")
    bootstrap_token: SecretStr | None = Field(
        None, min_length=16,
        description="This tenant's bootstrap admin token (at least 16 characters; from a secret). "
        "Stored only as a hash; create the other tokens with it.",
    )
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, le=64 << 20,
        description="Largest request body the admin API accepts (its bodies are specs and names: a few "
        "KiB); a larger one is refused with 413 before it is read (from its Content-Length, or where a "
        "chunked body passes it). Bodies are parsed one at a time off the event loop the gRPC services "
        "share; the loop still waits for one parse of this size at most (docs/benchmarks.md).",
    )
    max_json_depth: int = Field(
        32, ge=4, le=256, description="Deepest nesting of arrays and objects in a request body's JSON; "
        "deeper bodies are refused with 400 before they are parsed.",
    )


class EnrollmentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(
        50053, ge=0, le=65535,
        description="Port of the enrollment service (TLS without client certificates), on grpc.host; "
        "0 picks a free one. Served only with TLS and tls.ca_key_file.",
    )
    port_file: Path | None = Field(None, description="If set, the bound enrollment port is written here.")
    cert_lifetime_s: float = Field(
        86400.0, ge=60, le=90 * 86400,
        description="Lifetime of agents' certificates; agents renew at two thirds of it.",
    )
    renewal_grace_s: float = Field(
        30 * 86400.0, ge=0, le=365 * 86400,
        description="How long after its certificate expired an agent (offline meanwhile: a site down for "
        "a weekend) may still renew it on the enrollment port with the key it holds, without a new "
        "enrollment token; beyond it the agent is refused and needs a new token. 0: never.",
    )


class SchedulerLimits(BaseModel):
    """Per-agent limits; each one hit counts in fedstream_limit_hits_total{limit=...}."""

    model_config = ConfigDict(extra="forbid")

    registrations_per_min: float = Field(
        30.0, ge=0, description="Registrations per minute one agent may make (bursts of 10); more "
        "are refused with RESOURCE_EXHAUSTED. 0: no limit.",
    )
    heartbeats_per_interval: float = Field(
        3.0, ge=0, description="Heartbeats one agent may send per heartbeat_interval_s (bursts of 10); "
        "more are refused with RESOURCE_EXHAUSTED. 0: no limit.",
    )
    assignment_queue: int = Field(
        64, ge=1, description="Events waiting on one agent's assignment stream; an agent that falls "
        "this far behind has its stream closed and is sent its assignments again when it reconnects.",
    )
    max_labels: int = Field(
        64, ge=0, le=10_000, description="Labels one agent may register; more are refused "
        "(INVALID_ARGUMENT), so an agent listing stays small.",
    )
    max_label_bytes: int = Field(
        256, ge=1, le=65_536, description="Bytes (UTF-8) of one label's key, and of its value; "
        "longer ones are refused at registration (INVALID_ARGUMENT).",
    )
    max_tasks: int = Field(
        64, ge=0, le=10_000, description="Task names one agent may register; more are refused "
        "(INVALID_ARGUMENT).",
    )
    max_task_name_bytes: int = Field(
        128, ge=1, le=65_536, description="Bytes (UTF-8) of one task name an agent registers; "
        "longer ones are refused (INVALID_ARGUMENT).",
    )
    max_capability_bytes: int = Field(
        256, ge=1, le=65_536, description="Bytes (UTF-8) of one text capability an agent registers "
        "(device, GPU name, agent and PyTorch versions); longer ones are refused (INVALID_ARGUMENT). The other capabilities are "
        "fixed-width integers.",
    )


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEDSTREAM_SCHEDULER_", env_nested_delimiter="__", extra="forbid"
    )

    tenant: TenantSettings = Field(default_factory=TenantSettings, description="Tenant.")
    grpc: GrpcServerSettings = Field(default_factory=GrpcServerSettings, description="gRPC server.")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="Mutual TLS of gRPC (agents, aggregator).")
    limits: SchedulerLimits = Field(default_factory=SchedulerLimits, description="Per-agent limits.")
    enrollment: EnrollmentSettings = Field(
        default_factory=EnrollmentSettings, description="Agent enrollment and certificates."
    )
    api: ApiSettings = Field(default_factory=ApiSettings, description="REST admin API.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus /metrics.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    store: StoreSettings = Field(
        default_factory=StoreSettings,
        description="Model store (the aggregator's): the admin API lists, serves and pins its versions.",
    )
    aggregator_endpoint: str = Field(
        "127.0.0.1:50052", description="host:port where the scheduler reaches the aggregator."
    )
    aggregator_public_endpoint: str = Field(
        "",
        description="host:port that agents use to download models and upload updates; "
        "empty means aggregator_endpoint.",
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="How often agents heartbeat.")
    heartbeat_ttl_s: float = Field(
        15.0, gt=0, description="An agent without a heartbeat for this long is not alive."
    )
    run_lease_ttl_s: float = Field(
        10.0, gt=0, description="A run whose driving replica has not renewed its lease for "
        "this long is taken over by another (or a restarted) scheduler."
    )
    schedule_tick_s: float = Field(
        5.0, gt=0, le=60, description="How often the scheduler looks for due cron slots of its federations."
    )
    schedule_grace_s: float = Field(
        120.0, gt=0, description="A cron slot found later than this (every replica was down) is a "
        "missed slot, handled by the federation's missed policy (skip or run_once)."
    )
    max_consecutive_failed_rounds: int = Field(
        3, ge=1, description="A run fails after this many failed rounds in a row."
    )
