"""Builds the aggregator's gRPC server: the one factory that main and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from fedstream.grpcutil import DEFAULT_STREAM_WINDOW_BYTES, add_health, bind, make_server, set_serving
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.servicer import (
    ControlServicer,
    ModelServicer,
    UpdateServicer,
    add_transfer_servicers,
)

SERVICE_NAMES = (
    "fedstream.v1.ModelService",
    "fedstream.v1.UpdateService",
    "fedstream.v1.AggregatorControl",
)


@dataclass
class AggregatorServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: AggregatorService

    def set_serving(self, serving: bool) -> None:
        set_serving(self.health, SERVICE_NAMES, serving)

    def stop(self, grace: float | None = 2.0) -> None:
        set_serving(self.health, SERVICE_NAMES, False)
        self.server.stop(grace).wait()
        self.service.close()


def build_server(
    service: AggregatorService,
    host: str,
    port: int,
    max_workers: int = 64,
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
    serving: bool = True,
) -> AggregatorServer:
    """Creates, binds and starts the server. Health turns SERVING once it listens, or, with
    ``serving=False``, when the caller says so (once the backends answer)."""
    server = make_server(max_workers, stream_window_bytes)
    add_transfer_servicers(server, ModelServicer(service), UpdateServicer(service))
    pb_grpc.add_AggregatorControlServicer_to_server(ControlServicer(service), server)
    health_servicer = add_health(server, SERVICE_NAMES)
    bound = bind(server, host, port)
    server.start()
    set_serving(health_servicer, SERVICE_NAMES, serving)
    return AggregatorServer(server, bound, health_servicer, service)
