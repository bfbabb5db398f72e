"""Settings shared by the services: nested models that each service's settings object uses.

Each process has one typed settings object (pydantic-settings, an env prefix per service,
``__`` between nested names), validated once at start-up and passed down.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from fedstream.tensors import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

S = TypeVar("S", bound=BaseSettings)


class GrpcServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1", description="Address the gRPC server (and its enrollment and health ports) binds to: "
        "loopback by default; 0.0.0.0 for every interface (the Helm charts set it).",
    )
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

    model_config = ConfigDict(extra="forbid")

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
    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level. At DEBUG a failure to start is logged with its traceback."
    )
    json_format: bool = Field(False, description="One JSON object per log line.")
    grpc: bool = Field(
        False,
        description="Let gRPC's own log lines through: its C core's on stderr (at GRPC_VERBOSITY, "
        "gRPC's default ERROR) and its Python logger's. Off, the service says what matters itself.",
    )


class RedisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL; rediss:// for TLS (e.g. rediss://redis:6380/0).",
    )
    password: SecretStr | None = Field(None, description="Password, if not in the URL.")
    retry_s: float = Field(
        60.0, gt=0, description="How long a command is retried, with backoff, while Redis is unreachable."
    )


class SqliteSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(
        Path("fedstream-data/state.db"),
        description="The state file (created with its directory when missing; relative paths are "
        "from the working directory). The scheduler and the aggregator of one machine must name the "
        "same file: they share it (WAL mode). A local disk only, never a network file system.",
    )
    busy_timeout_s: float = Field(
        30.0, gt=0, allow_inf_nan=False,
        description="How long a write waits while another process writes to the file before it fails "
        "(UNAVAILABLE).",
    )
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="'normal': every commit is in the write-ahead log before it returns and the log is "
        "flushed to the disk at checkpoints: a killed process loses nothing committed, a power cut may "
        "lose the last commits. 'full' also flushes at every commit, so a power cut loses nothing either, "
        "at one disk flush (milliseconds) per write.",
    )


class StateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite", "redis", "memory"] = Field(
        "sqlite",
        description="State store: 'sqlite' keeps state in a local file that survives restarts and that "
        "the scheduler and aggregator of one machine share (a single-node install); 'redis' shares it "
        "between machines and replicas; 'memory' keeps it inside this process and loses it on exit "
        "(tests only).",
    )
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings, description="SQLite state file.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection.")
    audit_keep: int = Field(
        100_000, ge=1,
        description="Entries of the audit log of operator actions kept; the oldest go first.",
    )

    @property
    def shared(self) -> bool:
        """Whether other processes (the scheduler, other aggregators) see this store's state."""
        return self.backend != "memory"


class S3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    model_config = ConfigDict(extra="forbid")

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
    model_config = ConfigDict(extra="forbid")

    chunk_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=1,
        le=MAX_CHUNK_BYTES,
        description="Bytes per tensor chunk on the wire (below gRPC's 4 MiB message limit).",
    )


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field("default", description="Tenant whose state and models this process owns.")

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, v: str) -> str:
        if not v or not v.replace("-", "").isalnum() or not v.islower():
            raise ValueError("tenant must be lower-case letters, digits and '-'")
        return v


def _alternatives(annotation: object) -> tuple[object, ...]:
    """The types a field may hold: the members of a union (``X | None``), else the type itself."""
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The settings model a field holds (``X`` or ``X | None``), or None for any other value."""
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: object) -> bool:
    """Whether a field is a ``dict``, whose keys the environment may name one by one."""
    return any(get_origin(a) is dict or a is dict for a in _alternatives(annotation))


def _known(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether ``parts`` (a variable's name after the prefix, split at the delimiter) names a
    field of ``model``: a nested model's field, a key of a dict field, or a whole field."""
    field = model.model_fields.get(parts[0].lower())
    if field is None:
        return False
    if len(parts) == 1 or _is_mapping(field.annotation):
        return True
    nested = _nested_model(field.annotation)
    return nested is not None and _known(nested, parts[1:])


def variable_names(model: type[BaseModel], prefix: str, delimiter: str) -> list[str]:
    """Every variable naming a field of ``model``, nested models' fields included."""
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name.upper())
        nested = _nested_model(field.annotation)
        if nested is not None:
            names += variable_names(nested, prefix + name.upper() + delimiter, delimiter)
    return names


def _service_links(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The prefixes of the variables Kubernetes sets for each Service of the namespace
    (``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT...``, ``<SVC>_PORT...``): a Service named
    ``fedstream-scheduler`` puts ``FEDSTREAM_SCHEDULER_PORT`` in every pod, and those are not
    settings."""
    services = [n[: -len("SERVICE_HOST")] for n in (k.upper() for k in environ) if n.endswith("_SERVICE_HOST")]
    return tuple(p for svc in services for p in (svc + "SERVICE_", svc + "PORT"))


def misspelt_variables(cls: type[BaseSettings], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Variables of ``environ`` that carry the prefix of ``cls`` but name none of its settings,
    each with a message naming it and the nearest valid name.

    pydantic-settings ignores such a variable: a misspelt one would otherwise leave its setting
    at the default without a word. Names are compared as pydantic-settings reads them, without
    regard to case; the variables Kubernetes sets for its Services are not settings.
    """
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    links = _service_links(environ)
    valid = variable_names(cls, prefix, delimiter)
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper.startswith(links):
            continue
        if _known(cls, upper[len(prefix):].split(delimiter)):
            continue
        nearest = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        found.append((name, f"unknown setting {name}{hint}"))
    return found


def unknown_variables(cls: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """The messages of ``misspelt_variables``."""
    return [message for _, message in misspelt_variables(cls, environ)]


def load_settings(cls: type[S], prog: str) -> S | None:
    """Reads a service's settings from the environment, validated once.

    When they are invalid, or a variable with the service's prefix names no setting (a
    misspelling), prints one line per offending variable to stderr and returns None, so that
    the caller exits with ``ExitCode.BAD_SETTINGS`` instead of a traceback.
    """
    from fedstream.startup import InvalidSettings, load

    try:
        return load(cls)
    except InvalidSettings as e:
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for error in e.errors:
            print(f"{prog}: {error.line(prefix)}", file=sys.stderr)
        return None
