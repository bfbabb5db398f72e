"""The agent's settings: environment variables prefixed FEDSTREAM_AGENT_."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedstream.config import ChunkSettings, LogSettings
from fedstream.metrics import MetricsSettings
from fedstream.privacy import MAX_EPSILON_BUDGET
from fedstream.transfer import DEFAULT_MAX_MODEL_BYTES
from fedstream_tasks.base import SiteDataSettings


class AgentTlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    insecure_plaintext: bool = Field(
        False, description="Development only: dial the control plane without TLS. Logged as a warning at start."
    )
    ca_file: Path | None = Field(
        None, description="The tenant's CA certificate (PEM), given with the enrollment token: the only "
        "authority this agent trusts for the control plane.",
    )
    identity_dir: Path = Field(
        Path("fedstream-identity"),
        description="Where the agent keeps its key and certificate (keep it on a persistent volume: "
        "an agent that loses it needs a new enrollment token).",
    )
    enrollment_token_file: Path | None = Field(
        None, description="File holding the one-time enrollment token, used when identity_dir holds "
        "no current certificate.",
    )
    enroll_endpoint: str = Field(
        "127.0.0.1:50053", description="host:port of the scheduler's enrollment service."
    )


class AgentPrivacySettings(BaseModel):
    """This site's own privacy budget, for sites that trust no one: under local differential
    privacy each training round's upload is a release of the site's data, kept in
    ``tls.identity_dir``/privacy-ledger.json; the agent declines a round whose release would take
    the site's epsilon past its own limit, whatever the federation's budget says."""

    model_config = ConfigDict(extra="forbid")

    max_epsilon: float = Field(
        0.0, ge=0.0, le=MAX_EPSILON_BUDGET, allow_inf_nan=False,
        description="The most epsilon (at privacy.delta) this site's local differential privacy releases may spend "
        "together, over every run; the agent declines a local-DP training round that would pass it (logged as "
        "a warning, nothing uploaded). 0: no limit of the site's own (the releases are still recorded).",
    )
    delta: float = Field(
        1e-5, gt=0.0, lt=1.0, allow_inf_nan=False,
        description="The delta at which this site accounts its own epsilon (the federation's delta may differ).",
    )


class AgentMetricsSettings(MetricsSettings):
    """The agent's /metrics: on a free port by default, since several agents may share a machine."""

    port: int = Field(
        0, ge=0, le=65535,
        description="Metrics port; 0 (the default) picks a free one, logged at start and written to "
        "metrics.port_file, so that several agents run side by side on one machine. Set a fixed port "
        "where Prometheus scrapes it (the agent chart does).",
    )


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEDSTREAM_AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    agent_id: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=128,
        description="This agent's id (default: the host name).",
        json_schema_extra={"doc_default": "the host name"},
    )
    scheduler_endpoint: str = Field("127.0.0.1:50051", description="host:port of the scheduler.")
    tls: AgentTlsSettings = Field(default_factory=AgentTlsSettings, description="Mutual TLS and enrollment.")
    tasks: list[str] = Field(default_factory=lambda: ["digits"], description="Tasks this site offers.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels reported for selection.")
    data: SiteDataSettings = Field(default_factory=SiteDataSettings, description="The site's data.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train: 'auto' uses CUDA when present."
    )
    cpu_threads: int = Field(
        0, ge=0, description="Threads PyTorch uses on the CPU; 0 keeps PyTorch's default "
        "(set it when several agents share a machine)."
    )
    mixed_precision: bool = Field(
        True, description="On CUDA, train with float16 autocast and a gradient scaler."
    )
    slowdown: float = Field(
        1.0, ge=1.0, le=10_000.0, allow_inf_nan=False,
        description="For tests and benchmarks only: local training takes this many times its measured "
        "time (the agent waits the difference, stopping when its round closes or is cancelled), to "
        "emulate a slower site; 1 trains at full speed.",
    )
    chunks: ChunkSettings = Field(default_factory=ChunkSettings, description="Upload chunks.")
    max_model_bytes: int = Field(
        DEFAULT_MAX_MODEL_BYTES, ge=1, description="Largest model this agent downloads (it holds the "
        "model it trains in memory): a model header declaring more is refused before any memory is "
        "allocated for it."
    )
    privacy: AgentPrivacySettings = Field(
        default_factory=AgentPrivacySettings,
        description="This site's own privacy budget under local differential privacy.",
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    metrics: AgentMetricsSettings = Field(default_factory=AgentMetricsSettings, description="Prometheus /metrics.")
    reconnect_max_s: float = Field(
        10.0, gt=0, description="Longest wait between attempts to reach the scheduler."
    )
    disabled_recheck_s: float = Field(
        60.0, gt=0, description="While an operator has disabled this agent, how often it asks the "
        "scheduler again (it logs that it is disabled, waits, and resumes by itself once enabled)."
    )
    check_at_start: bool = Field(
        True, description="Run the connection check (`fedstream-agent check`: DNS, TCP, TLS, certificate, "
        "registration, a download from the aggregator) once at start and log its lines."
    )
