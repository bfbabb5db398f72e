"""Prometheus metrics: the exposition server every service runs, and what the core itself
measures (state- and model-store operations). Each service defines its own metrics once, in its
``metrics`` module. Labels have bounded cardinality: tenant, federation, kind, reason, backend,
operation; never an agent id, a run id or a round number. docs/metrics.md lists them all.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ConfigDict, Field

from fedstream.errors import FedstreamError
from fedstream.startup import bind_error

F = TypeVar("F", bound=Callable[..., Any])

# Seconds: from a Redis round trip to a model-sized S3 transfer.
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

STATE_OPERATION_SECONDS = Histogram(
    "fedstream_state_operation_seconds", "State store (SQLite, Redis) operation latency.",
    ["tenant", "backend", "operation"], buckets=OPERATION_BUCKETS,
)
STATE_OPERATION_ERRORS = Counter(
    "fedstream_state_operation_errors_total", "State store operations that failed on the server's side.",
    ["tenant", "backend", "operation"],
)
STORE_OPERATION_SECONDS = Histogram(
    "fedstream_store_operation_seconds", "Model store (S3, local) operation latency.",
    ["tenant", "backend", "operation"], buckets=OPERATION_BUCKETS,
)
STORE_OPERATION_ERRORS = Counter(
    "fedstream_store_operation_errors_total", "Model store operations that failed on the server's side.",
    ["tenant", "backend", "operation"],
)
LIMIT_HITS = Counter(
    "fedstream_limit_hits_total",
    "Calls refused or slowed by a protective limit (docs/security.md), by service and limit.",
    ["tenant", "service", "limit"],
)
GRPC_CALLS_IN_PROGRESS = Gauge(
    "fedstream_grpc_calls_in_progress",
    "gRPC calls this process is serving now, streams included (beyond grpc.max_concurrent_rpcs "
    "calls are refused with RESOURCE_EXHAUSTED).",
)
GRPC_MAX_CONCURRENT_CALLS = Gauge(
    "fedstream_grpc_max_concurrent_calls", "The grpc.max_concurrent_rpcs setting of the process's gRPC server."
)
MEMORY_LIMIT_BYTES = Gauge(
    "fedstream_memory_limit_bytes", "The process's memory limit (its cgroup's), 0 when none.", ["service"]
)


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    host: str = Field(
        "127.0.0.1", description="Address the metrics server binds to: loopback by default; 0.0.0.0 "
        "for every interface (the Helm charts set it).",
    )
    port: int = Field(
        9464, ge=0, le=65535,
        description="Metrics port (each service has its own default, so that they run side by side); "
        "0 picks a free one.",
    )
    port_file: Path | None = Field(None, description="If set, the bound port is written here.")


def serve_metrics(settings: MetricsSettings, service: str) -> int:
    """Starts the /metrics HTTP server in a thread; returns its port (0 when disabled)."""
    MEMORY_LIMIT_BYTES.labels(service).set(cgroup_memory_limit())
    if not settings.enabled:
        return 0
    server, _ = start_http_server(settings.port, settings.host)
    port = int(server.server_port)
    if settings.port_file is not None:
        tmp = settings.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(settings.port_file)
    return port


def start_metrics(settings: MetricsSettings, service: str) -> None:
    """``serve_metrics``, logged: where /metrics is served. Raises StartupError naming
    ``metrics.port`` when the port cannot be bound."""
    try:
        port = serve_metrics(settings, service)
    except OSError as e:
        raise bind_error("metrics.port", settings.host, settings.port, e) from e
    if port:
        log = logging.getLogger(f"fedstream_{service}")
        log.info("metrics on http://%s:%d/metrics", settings.host, port)


def cgroup_memory_limit() -> int:
    """The cgroup (v2, else v1) memory limit in bytes; 0 when unlimited or unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
        return 0
    return 0


class TenantScoped(Protocol):
    """A store serving one tenant: what ``timed`` labels its measurements with."""

    tenant: str


S = TypeVar("S", bound=TenantScoped)


def timed(seconds: Histogram, errors: Counter, kind: str) -> Callable[[F], F]:
    """Decorates a method of a ``TenantScoped`` store: its latency, and the failures that are
    the server's (not a caller's bad request), labelled by the store's tenant, the backend
    ``kind`` and the method's name."""

    def wrap(fn: F) -> F:
        operation = fn.__name__

        @functools.wraps(fn)
        def timed_call(self: TenantScoped, *args: Any, **kwargs: Any) -> Any:
            labels = (self.tenant, kind, operation)
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            except FedstreamError as e:
                if e.code in ("unavailable", "internal", "data_loss", "corrupt_model"):
                    errors.labels(*labels).inc()
                raise
            except Exception:
                errors.labels(*labels).inc()
                raise
            finally:
                seconds.labels(*labels).observe(time.perf_counter() - start)

        return timed_call  # type: ignore[return-value]

    return wrap


def instrument(cls: type[S], methods: tuple[str, ...], seconds: Histogram, errors: Counter, kind: str) -> type[S]:
    """Wraps the named methods of a ``TenantScoped`` store class with ``timed``; raises
    AttributeError naming a method the class lacks."""
    for name in methods:
        setattr(cls, name, timed(seconds, errors, kind)(getattr(cls, name)))
    return cls
