"""Builds the scheduler's gRPC server: the one factory that main and the tests use."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.grpcutil import DEFAULT_STREAM_WINDOW_BYTES, bind, make_aio_server
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.servicer import AgentServicer, RunServicer

SERVICE_NAMES = ("fedstream.v1.AgentService", "fedstream.v1.RunService")


@dataclass
class SchedulerServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: SchedulerService

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = 2.0) -> None:
        await self.set_serving(False)
        await self.service.close()
        await self.server.stop(grace)
        await self.service.aggregator.close()


async def build_server(
    service: SchedulerService,
    host: str,
    port: int,
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
    serving: bool = True,
) -> SchedulerServer:
    """Creates, binds and starts the server. Health turns SERVING once it listens, or, with
    ``serving=False``, when the caller says so (once the state store answers)."""
    server = make_aio_server(stream_window_bytes)
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(service), server)
    pb_grpc.add_RunServiceServicer_to_server(RunServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = bind(server, host, port)
    await server.start()
    out = SchedulerServer(server, bound, health_servicer, service)
    await out.set_serving(serving)
    return out
