"""Settings shared by the services: nested models that each service's settings object uses.

Each process has one typed settings object (pydantic-settings, an env prefix per service,
``__`` between nested names), validated once at start-up and passed down.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings

from fedstream.tensors import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

S = TypeVar("S", bound=BaseSettings)


class GrpcServerSettings(BaseModel):
    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    port_file: Path | None = Field(
        None, description="If set, the bound port is written here once the server serves."
    )
    max_workers: int = Field(64, ge=4, description="Threads serving gRPC calls.")
    stream_window_bytes: int = Field(
        4 << 20,
        ge=0,
        description="HTTP/2 flow-control window per stream: the most a stream can have buffered "
        "in the server. Raise it for links whose bandwidth x round-trip time is larger; 0 lets "
        "gRPC grow windows by bandwidth-delay probing, without a bound.",
    )


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line.")


class StateSettings(BaseModel):
    backend: Literal["memory"] = Field(
        "memory", description="State store: 'memory' keeps state inside this process."
    )


class StoreSettings(BaseModel):
    backend: Literal["local"] = Field(
        "local", description="Model store: 'local' keeps safetensors files in a directory."
    )
    path: Path = Field(Path("fedstream-data/models"), description="Directory of the local store.")


class ChunkSettings(BaseModel):
    chunk_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=1,
        le=MAX_CHUNK_BYTES,
        description="Bytes per tensor chunk on the wire (below gRPC's 4 MiB message limit).",
    )


class TenantSettings(BaseModel):
    tenant: str = Field("default", description="Tenant whose state and models this process owns.")

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, v: str) -> str:
        if not v or not v.replace("-", "").isalnum() or not v.islower():
            raise ValueError("tenant must be lower-case letters, digits and '-'")
        return v


def load_settings(cls: type[S], prog: str) -> S | None:
    """Reads a service's settings from the environment, validated once.

    When they are invalid, prints every offending field to stderr and returns None, so that
    the caller exits with its bad-settings code instead of a traceback.
    """
    try:
        return cls()
    except ValidationError as e:
        print(f"{prog}: invalid settings:\n{e}", file=sys.stderr)
        return None
