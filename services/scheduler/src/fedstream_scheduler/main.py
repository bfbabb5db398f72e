"""Entry point of fedstream-scheduler: parse settings, build, serve."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable

from fedstream.auth import load_authority, service_identity
from fedstream.backends import make_model_store, make_state_store
from fedstream.exitcodes import ExitCode
from fedstream.grpcutil import write_port_file
from fedstream.metrics import start_metrics
from fedstream.pki import TlsIdentity
from fedstream.readiness import wait_until_reachable
from fedstream.settings_doc import service_parser, show_config
from fedstream.startup import StartupError, run_service
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.cron import CronScheduler
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings

log = logging.getLogger("fedstream_scheduler")
# The admin API's tokens are made with a token: without the bootstrap one there is no first.
NO_API_TOKEN = (
    "the admin API has no token, so it refuses every request (401): set "
    "FEDSTREAM_SCHEDULER_API__BOOTSTRAP_TOKEN to a secret of at least 16 characters (e.g. "
    "$(openssl rand -hex 32)) and restart; with it, create the other tokens (docs/api.md)"
)


async def serve(settings: SchedulerSettings) -> int:
    """Builds the scheduler from ``settings`` and serves until SIGTERM or SIGINT; returns the
    process's exit code. Raises StartupError when a setting cannot be used (nothing is left
    listening)."""
    tenant = settings.tenant.tenant
    identity = service_identity(settings.tls, tenant, "scheduler")
    authority = load_authority(settings.tls, tenant)
    state = make_state_store(settings.state, tenant)
    store = make_model_store(settings.store, tenant)
    service = SchedulerService(state, AggregatorClient(settings.aggregator_endpoint, identity), settings)
    enrollment = Enrollment(state, authority, settings.enrollment.cert_lifetime_s,
                            renewal_grace_s=settings.enrollment.renewal_grace_s)
    admin = AdminServices(service, store, enrollment=enrollment)
    server = await _start_grpc(settings, service, identity, enrollment, admin)
    admin.live = False  # until _go_live: the API says "starting" rather than refusing tokens
    cron = CronScheduler(admin, service.instance_id, tick_s=settings.schedule_tick_s,
                         grace_s=settings.schedule_grace_s, lease_ttl_s=3 * settings.schedule_tick_s)
    api = None
    try:
        api = await _start_api(settings, admin)
        start_metrics(settings.metrics, "scheduler")
    except StartupError:
        if api is not None:
            await api.stop()
        await server.stop()
        raise
    write_port_file(settings.grpc.port_file, server.port)
    log.info(
        "listening on %s:%d (%s, tenant %s, aggregator %s)",
        settings.grpc.host, server.port, "mutual TLS" if identity else "PLAINTEXT", tenant,
        settings.aggregator_endpoint,
    )
    checks = {state.endpoint(): state.ping, store.endpoint(): store.ping}
    await _serve_until_signalled(checks, functools.partial(_go_live, settings, admin, service, cron, server))
    log.info("shutting down")
    await cron.stop()
    if api is not None:
        await api.stop()
    await server.stop()
    return ExitCode.OK


async def _start_grpc(
    settings: SchedulerSettings, service: SchedulerService, identity: TlsIdentity | None, enrollment: Enrollment,
    admin: AdminServices,
) -> SchedulerServer:
    """The gRPC server (and the enrollment server, when there is one), not yet serving; raises
    StartupError when a port cannot be bound."""
    server = await build_server(
        service, settings.grpc.host, settings.grpc.port, settings.grpc.stream_window_bytes,
        serving=False, tls=identity, enrollment=enrollment, enroll_port=settings.enrollment.port,
        health_port=settings.grpc.health_port, admin=admin,
    )
    if server.enroll_server is not None:
        write_port_file(settings.enrollment.port_file, server.enroll_port)
        log.info("agents enroll on %s:%d", settings.grpc.host, server.enroll_port)
    return server


async def _start_api(settings: SchedulerSettings, admin: AdminServices) -> ApiServer | None:
    """The REST admin API, started, or None when it is disabled; raises StartupError when its
    port cannot be bound."""
    if not settings.api.enabled:
        return None
    api = ApiServer(build_api({settings.tenant.tenant: admin}, settings.api), settings.api.host, settings.api.port)
    await api.start()
    write_port_file(settings.api.port_file, api.port)
    log.info("admin API on http://%s:%d/api/v1", settings.api.host, api.port)
    return api


async def _serve_until_signalled(
    checks: dict[str, Callable[[], None]], go_live: Callable[[], Awaitable[None]]
) -> None:
    """Runs ``go_live`` once every backend in ``checks`` answers; returns on SIGTERM or SIGINT
    (before going live, if one comes first)."""
    stop = asyncio.Event()
    stopping = threading.Event()

    def on_signal() -> None:
        stop.set()
        stopping.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if await asyncio.to_thread(wait_until_reachable, checks, stopping):
        await go_live()
    await stop.wait()


async def _go_live(
    settings: SchedulerSettings, admin: AdminServices, service: SchedulerService, cron: CronScheduler,
    server: SchedulerServer,
) -> None:
    """Starts the work that needs the backends, then reports SERVING."""
    if settings.api.bootstrap_token is not None:
        admin.tokens.ensure_bootstrap(settings.api.bootstrap_token.get_secret_value())
    elif settings.api.enabled and not admin.tokens.state.list_tokens():
        log.warning(NO_API_TOKEN)
    admin.live = True
    service.start_adopting()
    cron.start()
    await server.set_serving(True)
    log.info("serving")


DESCRIPTION = (
    "fedstream scheduler: registers agents, selects participants, drives rounds and serves the run "
    "API over gRPC (port 50051), agents' enrollment (50053) and the REST admin API (/api/v1, port "
    "8080; docs/api.md), all on 127.0.0.1 unless told otherwise. Configured by environment variables "
    "prefixed FEDSTREAM_SCHEDULER_, nested names joined by '__' (listed below). gRPC is mutual TLS "
    "under the tenant's CA: FEDSTREAM_SCHEDULER_TLS__CA_FILE and TLS__CA_KEY_FILE (fedstream pki "
    "init-ca); TLS__INSECURE_PLAINTEXT=true is for development only (docs/security.md). A setting "
    "that cannot be used stops it with one line naming the variable, and an exit code: 2 settings, "
    "3 a port that cannot be bound, 4 a data directory that cannot be written."
)


def main(argv: list[str] | None = None) -> int:
    parser, _ = service_parser(SchedulerSettings, DESCRIPTION)
    args = parser.parse_args(argv)
    if args.command == "config":
        return show_config(SchedulerSettings)
    return run_service("fedstream-scheduler", SchedulerSettings, lambda s: asyncio.run(serve(s)),
                       lambda _: "scheduler")
