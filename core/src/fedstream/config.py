"""Settings shared by the services: nested models that each service's settings object uses.

Each process has one typed settings object (pydantic-settings, an env prefix per service,
``__`` between nested names), validated once at start-up and passed down.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings

from fedstream.tensors import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

S = TypeVar("S", bound=BaseSettings)


class GrpcServerSettings(BaseModel):
    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    port_file: Path | None = Field(
        None, description="If set, the bound port is written here once the server serves."
    )
    health_port: int | None = Field(
        None, ge=0, le=65535,
        description="A plaintext port serving only grpc.health.v1, for probes that cannot present a "
        "client certificate (kubelet's gRPC probes); unset: none. It carries no data and no identity.",
    )
    max_workers: int = Field(64, ge=4, description="Threads serving gRPC calls.")
    max_concurrent_rpcs: int = Field(
        4096, ge=16,
        description="Calls in progress or waiting at once, streams included; beyond it calls are "
        "refused with RESOURCE_EXHAUSTED instead of queueing without bound.",
    )
    stream_window_bytes: int = Field(
        4 << 20,
        ge=0,
        description="HTTP/2 flow-control window per stream: the most a stream can have buffered "
        "in the server. Raise it for links whose bandwidth x round-trip time is larger; 0 lets "
        "gRPC grow windows by bandwidth-delay probing, without a bound.",
    )


class TlsSettings(BaseModel):
    """Mutual TLS of a service's gRPC server and of the channels it dials."""

    model_config = {"extra": "forbid"}

    insecure_plaintext: bool = Field(
        False,
        description="Development only: serve and dial gRPC without TLS, and take agents at the "
        "id their messages claim. Logged as a warning at start. Never on an untrusted network.",
    )
    ca_file: Path | None = Field(
        None, description="The tenant's CA certificate (PEM): the only authority whose "
        "certificates this process accepts from peers.",
    )
    ca_key_file: Path | None = Field(
        None, description="The tenant's CA key (PEM). With it the process issues its own "
        "certificate at start (naming server_names), and the scheduler signs agents' enrollments.",
    )
    cert_file: Path | None = Field(
        None, description="This process's certificate (PEM), when not issued from ca_key_file "
        "(e.g. by cert-manager); its URI name must be spiffe://fedstream/tenant/<tenant>/service/<name>.",
    )
    key_file: Path | None = Field(None, description="The key of cert_file (PEM).")
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        description="Host names and IP addresses that peers use to reach this process; the "
        "certificate issued from ca_key_file names them. JSON list.",
    )


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per log line.")


class RedisSettings(BaseModel):
    url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL; rediss:// for TLS (e.g. rediss://redis:6380/0).",
    )
    password: SecretStr | None = Field(None, description="Password, if not in the URL.")
    retry_s: float = Field(
        60.0, gt=0, description="How long a command is retried, with backoff, while Redis is unreachable."
    )


class StateSettings(BaseModel):
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="State store: 'memory' keeps state inside this process (one machine only); "
        "'redis' shares it between processes and replicas.",
    )
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")


class S3Settings(BaseModel):
    endpoint: str = Field("localhost:9000", description="host:port of the S3/MinIO endpoint.")
    access_key: str = Field("", description="Access key.")
    secret_key: SecretStr = Field(SecretStr(""), description="Secret key.")
    secure: bool = Field(False, description="Use HTTPS.")
    region: str | None = Field(None, description="Region, if the endpoint needs one.")
    bucket: str = Field("fedstream", description="Bucket; each tenant's objects live under its own prefix.")
    create_bucket: bool = Field(True, description="Create the bucket at start-up when missing.")
    part_bytes: int = Field(
        16 << 20, ge=5 << 20, description="Multipart upload part size (at least 5 MiB)."
    )
    retry_s: float = Field(
        60.0, gt=0, description="How long an operation is retried, with backoff, while S3 is unreachable."
    )


class StoreSettings(BaseModel):
    backend: Literal["local", "s3"] = Field(
        "local",
        description="Model store: 'local' keeps safetensors files in a directory; 's3' in an "
        "S3-compatible object store (MinIO).",
    )
    path: Path = Field(
        Path("fedstream-data/models"),
        description="Directory of the local store; with 's3', where versions are staged before upload.",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 connection.")
    keep_last: int = Field(
        0, ge=0, description="Versions kept per run beside pinned ones; 0 keeps every version."
    )


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
