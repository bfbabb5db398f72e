"""Builds the aggregator's gRPC server: the one factory that main and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from fedstream.auth import Guard
from fedstream.grpcutil import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_STREAM_WINDOW_BYTES,
    add_health,
    bind,
    make_server,
    server_credentials,
    set_serving,
)
from fedstream.limits import RateLimiter, StreamSlots
from fedstream.memtune import release_free_memory
from fedstream.metrics import GRPC_MAX_CONCURRENT_CALLS, LIMIT_HITS
from fedstream.pki import TlsIdentity
from fedstream.secagg.signing import Trust
from fedstream.startup import StartupError
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import secagg_pb2_grpc as secagg_grpc
from fedstream_aggregator.secure_servicer import SecureAggregationServicer
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.servicer import (
    ControlServicer,
    ModelServicer,
    UpdateServicer,
    add_transfer_servicers,
)
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_aggregator.streams import StreamWatch

SERVICE_NAMES = (
    "fedstream.v1.ModelService",
    "fedstream.v1.UpdateService",
    "fedstream.v1.AggregatorControl",
    "fedstream.v1.SecureAggregation",
)


@dataclass
class AggregatorServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: AggregatorService
    # The plaintext health-only server for probes, when there is one.
    health_server: grpc.Server | None = None
    health_port: int = 0
    # Each agent's open downloads and uploads.
    slots: StreamSlots | None = None
    # Ends idle uploads and downloads.
    watch: StreamWatch | None = None

    def set_serving(self, serving: bool) -> None:
        set_serving(self.health, SERVICE_NAMES, serving)

    def stop(self, grace: float | None = 2.0) -> None:
        set_serving(self.health, SERVICE_NAMES, False)
        if self.health_server is not None:
            self.health_server.stop(grace).wait()
        self.server.stop(grace).wait()
        if self.watch is not None:
            self.watch.close()
        self.service.close()


def _apply_limits(service: AggregatorService, limits: AggregatorLimits, max_workers: int) -> None:
    """Sets the service's size limits; raises ValueError for limits that contradict each other."""
    service.max_update_bytes = limits.max_update_bytes
    service.ingest.max_metrics = limits.max_metrics_per_report
    service.ingest.max_metric_name_bytes = limits.max_metric_name_bytes
    service.ingest.max_tensors = limits.max_tensors
    service.ingest.max_tensor_name_length = limits.max_tensor_name_length
    if limits.min_download_chunk_bytes > limits.max_download_chunk_bytes:
        raise ValueError(
            f"limits.min_download_chunk_bytes ({limits.min_download_chunk_bytes}) must not pass "
            f"limits.max_download_chunk_bytes ({limits.max_download_chunk_bytes})"
        )
    service.download_chunk_bytes = (limits.min_download_chunk_bytes, limits.max_download_chunk_bytes)
    service.partials.ttl_s = limits.partial_upload_ttl_s
    service.partials.max_bytes = limits.partial_upload_max_bytes
    if limits.control_threads >= max_workers:
        raise ValueError(
            f"limits.control_threads ({limits.control_threads}) must be below grpc.max_workers ({max_workers})"
        )


def build_server(
    service: AggregatorService,
    host: str,
    port: int,
    max_workers: int = 64,
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
    serving: bool = True,
    tls: TlsIdentity | None = None,
    check_agents: bool = True,
    limits: AggregatorLimits | None = None,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    health_port: int | None = None,
) -> AggregatorServer:
    """Creates, binds and starts the server. Health turns SERVING once it listens, or, with
    ``serving=False``, when the caller says so (once the backends answer).

    With ``tls`` every client must present a certificate of the tenant's authority: agents
    download and upload as themselves, only services control rounds. Without, the server is
    plaintext (development). ``check_agents``: whether the service's state store is the
    scheduler's, so that each agent's record (enrolled, not disabled, certificate current) is
    checked on every call. With ``health_port`` not None, a plaintext server on it answers
    grpc.health.v1 only (kubelet probes cannot present certificates). Raises StartupError
    naming the setting of a port that cannot be bound."""
    guard = Guard(service.state.tenant, tls is not None, service.state, check_agents)
    limits = limits or AggregatorLimits()
    _apply_limits(service, limits, max_workers)
    service.partials.start()
    # Once no transfer is left, the allocator's free memory goes back to the system.
    slots = StreamSlots(limits.streams_per_agent, max_workers - limits.control_threads, release_free_memory)
    tenant = service.state.tenant
    watch = StreamWatch(limits.stream_idle_s, LIMIT_HITS.labels(tenant, "aggregator", "stream_idle_s").inc)
    server = make_server(max_workers, stream_window_bytes, max_concurrent_rpcs)
    GRPC_MAX_CONCURRENT_CALLS.set(max_concurrent_rpcs)
    add_transfer_servicers(
        server,
        ModelServicer(service, guard, slots, watch),
        UpdateServicer(service, guard, slots, RateLimiter(limits.chunks_per_s, limits.chunks_per_s), watch),
    )
    pb_grpc.add_AggregatorControlServicer_to_server(ControlServicer(service, guard), server)
    trust = Trust(tls.ca_pem, tenant) if tls is not None else None  # checks agents' signed keys
    secagg_grpc.add_SecureAggregationServicer_to_server(SecureAggregationServicer(service.rounds, guard, trust), server)
    health_servicer = add_health(server, SERVICE_NAMES)
    bound = bind(server, host, port, server_credentials(tls) if tls is not None else None)
    health_server, health_bound = None, 0
    if health_port is not None:
        health_server = make_server(4, stream_window_bytes, 64)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        try:
            health_bound = bind(health_server, host, health_port, setting="grpc.health_port")
        except StartupError:
            server.stop(None)
            raise
        health_server.start()
    server.start()
    set_serving(health_servicer, SERVICE_NAMES, serving)
    return AggregatorServer(server, bound, health_servicer, service, health_server, health_bound, slots, watch)
