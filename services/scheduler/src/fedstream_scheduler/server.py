"""Builds the scheduler's gRPC server: the one factory that main and the tests use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.auth import Guard
from fedstream.grpcutil import DEFAULT_STREAM_WINDOW_BYTES, bind, make_aio_server, server_credentials
from fedstream.metrics import GRPC_MAX_CONCURRENT_CALLS
from fedstream.pki import TlsIdentity
from fedstream.protocol import PROTOCOL_VERSION
from fedstream.startup import StartupError
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.servicer import AgentServicer, EnrollmentServicer, RunServicer

if TYPE_CHECKING:
    from fedstream_scheduler.admin import AdminServices

SERVICE_NAMES = ("fedstream.v1.AgentService", "fedstream.v1.RunService")


@dataclass
class SchedulerServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: SchedulerService
    enrollment: Enrollment
    # The enrollment server (TLS without client certificates), when there is one.
    enroll_server: grpc.aio.Server | None = None
    enroll_port: int = 0
    # The plaintext health-only server for probes, when there is one.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

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
        for extra in (self.enroll_server, self.health_server):
            if extra is not None:
                await extra.stop(grace)
        await self.server.stop(grace)
        await self.service.aggregator.close()


def _add_servicers(
    server: grpc.aio.Server, service: SchedulerService, guard: Guard, enrollment: Enrollment, protocol: int,
    admin: AdminServices | None,
) -> None:
    """The agents' and runs' services, and the sites' when there is ``admin``."""
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(service, guard, enrollment, protocol), server)
    pb_grpc.add_RunServiceServicer_to_server(RunServicer(service, guard), server)
    if admin is not None:
        from fedstream_scheduler.site_servicer import SiteServicer

        pb_grpc.add_SiteServiceServicer_to_server(SiteServicer(admin, guard), server)


async def build_server(
    service: SchedulerService,
    host: str,
    port: int,
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
    serving: bool = True,
    tls: TlsIdentity | None = None,
    enrollment: Enrollment | None = None,
    enroll_port: int | None = None,
    health_port: int | None = None,
    protocol: int = PROTOCOL_VERSION,
    admin: AdminServices | None = None,
) -> SchedulerServer:
    """Creates, binds and starts the server. Health turns SERVING once it listens, or, with
    ``serving=False``, when the caller says so (once the state store answers).

    With ``tls`` every client must present a certificate of the tenant's authority; without,
    the server is plaintext (development). With ``tls``, an enrollment that holds the
    authority and ``enroll_port`` not None, agents enroll on that port (TLS, no client
    certificate asked). With ``health_port`` not None, a plaintext server on it answers
    grpc.health.v1 only (kubelet probes cannot present certificates). ``protocol`` is the
    control plane's protocol version (fedstream.protocol; another only in tests). With ``admin``
    (the tenant's services) the SiteService is served too (releases, channels, run requests). Raises
    StartupError naming the setting of a port that cannot be bound (no server is left listening)."""
    enrollment = enrollment or Enrollment(service.state, None, 86400.0, service.clock)
    server = make_aio_server(stream_window_bytes, service.settings.grpc.max_concurrent_rpcs)
    GRPC_MAX_CONCURRENT_CALLS.set(service.settings.grpc.max_concurrent_rpcs)
    _add_servicers(server, service, Guard(service.state.tenant, tls is not None, service.state), enrollment,
                   protocol, admin)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enroll_server = health_server = None
    if tls is not None and enrollment.ca is not None and enroll_port is not None:
        enroll_server = make_aio_server(stream_window_bytes)
        pb_grpc.add_EnrollmentServiceServicer_to_server(EnrollmentServicer(enrollment), enroll_server)
    if health_port is not None:
        health_server = make_aio_server(stream_window_bytes)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    try:
        bound = bind(server, host, port, server_credentials(tls) if tls is not None else None)
        enroll_bound = health_bound = 0
        if enroll_server is not None:
            assert enroll_port is not None and tls is not None
            enroll_bound = bind(enroll_server, host, enroll_port, server_credentials(tls, client_certificates=False),
                                setting="enrollment.port")
        if health_server is not None:
            assert health_port is not None
            health_bound = bind(health_server, host, health_port, setting="grpc.health_port")
    except StartupError:
        for unused in (server, enroll_server, health_server):
            if unused is not None:
                await unused.stop(None)
        raise
    for started in (enroll_server, health_server, server):
        if started is not None:
            await started.start()
    out = SchedulerServer(server, bound, health_servicer, service, enrollment, enroll_server, enroll_bound,
                          health_server, health_bound)
    await out.set_serving(serving)
    return out
