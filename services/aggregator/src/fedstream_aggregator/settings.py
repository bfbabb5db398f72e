"""The aggregator's settings: environment variables prefixed FEDSTREAM_AGGREGATOR_."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedstream.config import (
    ChunkSettings,
    GrpcServerSettings,
    LogSettings,
    StateSettings,
    StoreSettings,
    TenantSettings,
)


class AggregatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEDSTREAM_AGGREGATOR_", env_nested_delimiter="__", extra="forbid"
    )

    tenant: TenantSettings = Field(default_factory=TenantSettings, description="Tenant.")
    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50052), description="gRPC server."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Model store.")
    chunks: ChunkSettings = Field(default_factory=ChunkSettings, description="Download chunks.")
    durable_updates: bool | None = Field(
        None,
        description="Keep each counted update in the model store until its round commits, so "
        "that a restarted aggregator can rebuild the round. Default: on with the redis state "
        "backend (whose journal survives a restart), off with the in-process one.",
    )
    spool_dir: Path = Field(
        Path(tempfile.gettempdir()) / "fedstream-spool",
        description="Directory where incoming updates are spooled until verified and folded.",
    )
