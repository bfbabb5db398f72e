"""Entry point of fedstream-aggregator: parse settings, build, serve."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from fedstream.auth import service_identity
from fedstream.backends import make_model_store, make_state_store
from fedstream.exitcodes import ExitCode
from fedstream.grpcutil import write_port_file
from fedstream.metrics import start_metrics
from fedstream.pki import TlsIdentity
from fedstream.readiness import wait_until_reachable
from fedstream.settings_doc import service_parser, show_config
from fedstream.startup import StartupError, run_service, writable_directory
from fedstream.state import StateStore
from fedstream.store import ModelStore
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.leaves import Leaf
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorSettings

log = logging.getLogger("fedstream_aggregator")


DESCRIPTION = (
    "fedstream aggregator: verifies agents' streamed updates, folds them into a running accumulator "
    "and commits each round's model. Serves gRPC on 127.0.0.1:50052 and /metrics on 127.0.0.1:9465 "
    "unless told otherwise. Configured by environment variables prefixed FEDSTREAM_AGGREGATOR_, "
    "nested names joined by '__' (listed below). gRPC is mutual TLS under the tenant's CA: "
    "FEDSTREAM_AGGREGATOR_TLS__CA_FILE and TLS__CA_KEY_FILE (fedstream pki init-ca); "
    "TLS__INSECURE_PLAINTEXT=true is for development only (docs/security.md). A setting that cannot "
    "be used stops it with one line naming the variable, and an exit code: 2 settings, 3 a port "
    "that cannot be bound, 4 a data directory that cannot be written."
)


def main(argv: list[str] | None = None) -> int:
    parser, _ = service_parser(AggregatorSettings, DESCRIPTION)
    args = parser.parse_args(argv)
    if args.command == "config":
        return show_config(AggregatorSettings)
    return run_service("fedstream-aggregator", AggregatorSettings, serve, lambda _: "aggregator")


def serve(settings: AggregatorSettings) -> int:
    """Builds the aggregator from ``settings`` and serves until SIGTERM or SIGINT; returns the
    exit code. Raises StartupError when a setting cannot be used."""
    tenant = settings.tenant.tenant
    identity = service_identity(settings.tls, tenant, "aggregator")
    writable_directory(settings.spool_dir, "spool_dir")
    state = make_state_store(settings.state, tenant)
    if identity is not None and not settings.state.shared:
        log.warning("the in-process state store does not hold the scheduler's agents: revoked or "
                    "disabled agents' certificates are refused here only once they expire")
    store = make_model_store(settings.store, tenant)
    service = _build_service(settings, state, store, identity, _distiller(settings))
    server = _start_server(settings, service, identity)
    try:
        start_metrics(settings.metrics, "aggregator")
    except StartupError:
        server.stop()
        raise
    write_port_file(settings.grpc.port_file, server.port)
    log.info("listening on %s:%d (%s, tenant %s)", settings.grpc.host, server.port,
             "mutual TLS" if identity else "PLAINTEXT", tenant)
    if settings.leaves:
        log.info("root of %d leaf aggregators: %s", len(settings.leaves), ", ".join(x.endpoint for x in settings.leaves))
    _serve_until_signalled(server, {state.endpoint(): state.ping, store.endpoint(): store.ping})
    log.info("shutting down")
    server.stop()
    return ExitCode.OK


def _distiller(settings: AggregatorSettings) -> Distiller | None:
    """The distiller over the configured public set, or None without one; raises StartupError
    naming ``distill.public_data`` when the set or the device cannot be used."""
    if settings.distill.public_data is None:
        return None
    try:
        distiller = Distiller(settings.distill.public_data, settings.distill.device)
    except (RuntimeError, ValueError) as e:
        raise StartupError("distill.public_data", settings.distill.public_data, f"distillation cannot start: {e}",
                           "install fedstream-aggregator[distill], fix the set or {distill.device}, or unset it"
                           ) from e
    log.info("distillation on the public set %s (%s)", settings.distill.public_data, distiller.device)
    return distiller


def _build_service(
    settings: AggregatorSettings, state: StateStore, store: ModelStore, identity: TlsIdentity | None,
    distiller: Distiller | None,
) -> AggregatorService:
    """The aggregator's service, not yet ready: it recovers its rounds once the backends answer."""
    durable = settings.durable_updates
    if durable is None:
        durable = settings.state.shared
    service = AggregatorService(
        state, store, settings.spool_dir, chunk_bytes=settings.chunks.chunk_bytes,
        keep_last=settings.store.keep_last, durable=durable,
        accumulator_memory_budget_bytes=settings.accumulator_memory_budget_bytes,
        journal=f"leaf/{settings.name}" if settings.name else "",
        leaves=[Leaf(leaf.endpoint, leaf.public_endpoint, identity) for leaf in settings.leaves],
        distiller=distiller,
    )
    service.ready = False
    return service


def _start_server(settings: AggregatorSettings, service: AggregatorService, identity: TlsIdentity | None) -> AggregatorServer:
    """The gRPC server, listening but not yet serving; raises StartupError when a port cannot be bound."""
    return build_server(
        service,
        settings.grpc.host,
        settings.grpc.port,
        settings.grpc.max_workers,
        settings.grpc.stream_window_bytes,
        serving=False,
        tls=identity,
        # Agents' records are the scheduler's: only a shared store (SQLite, Redis) has them.
        check_agents=settings.state.shared,
        limits=settings.limits,
        max_concurrent_rpcs=settings.grpc.max_concurrent_rpcs,
        health_port=settings.grpc.health_port,
    )


def _serve_until_signalled(server: AggregatorServer, checks: dict[str, Callable[[], None]]) -> None:
    """Once every backend in ``checks`` answers, recovers the unfinished rounds and reports
    SERVING; returns on SIGTERM or SIGINT (before serving, if one comes first)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if wait_until_reachable(checks, stop):
        recovered = server.service.recover()
        if recovered:
            log.info("recovered %d unfinished rounds", recovered)
        server.service.ready = True
        server.set_serving(True)
        log.info("serving")
    while not stop.wait(1.0):
        pass
