"""Entry point of fedstream-aggregator: parse settings, build, serve."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from fedstream.auth import service_identity
from fedstream.backends import make_model_store, make_state_store
from fedstream.config import load_settings
from fedstream.exitcodes import ExitCode
from fedstream.grpcutil import write_port_file
from fedstream.logs import setup_logging
from fedstream.memtune import tune_allocator
from fedstream.metrics import start_metrics
from fedstream.readiness import wait_until_reachable
from fedstream.version import add_version_argument
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.leaves import Leaf
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorSettings

log = logging.getLogger("fedstream_aggregator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedstream-aggregator",
        description="fedstream aggregator: verifies agents' streamed updates, folds them into a "
        "running accumulator and commits each round's model. Configured by environment "
        "variables prefixed FEDSTREAM_AGGREGATOR_ (nested names joined by '__', e.g. "
        "FEDSTREAM_AGGREGATOR_GRPC__PORT=50052). gRPC is mutual TLS under the tenant's CA: "
        "FEDSTREAM_AGGREGATOR_TLS__CA_FILE and TLS__CA_KEY_FILE (fedstream pki init-ca); "
        "TLS__INSECURE_PLAINTEXT=true is for development only (docs/security.md).",
    )
    add_version_argument(parser, "fedstream-aggregator")
    parser.parse_args(argv)
    settings = load_settings(AggregatorSettings, "fedstream-aggregator")
    if settings is None:
        return ExitCode.BAD_SETTINGS
    setup_logging(settings.log.level, settings.log.json_format, "aggregator")
    tune_allocator()
    tenant = settings.tenant.tenant
    try:
        identity = service_identity(settings.tls, tenant, "aggregator")
    except ValueError as e:
        log.error("invalid TLS settings: %s", e)
        return ExitCode.BAD_SETTINGS
    state = make_state_store(settings.state, tenant)
    if identity is not None and settings.state.backend != "redis":
        log.warning("the in-process state store does not hold the scheduler's agents: revoked or "
                    "disabled agents' certificates are refused here only once they expire")
    store = make_model_store(settings.store, tenant)
    distiller = None
    if settings.distill.public_data is not None:
        try:
            distiller = Distiller(settings.distill.public_data, settings.distill.device)
        except (RuntimeError, ValueError) as e:
            log.error("distillation: %s", e)
            return ExitCode.BAD_SETTINGS
        log.info("distillation on the public set %s (%s)", settings.distill.public_data, distiller.device)
    durable = settings.durable_updates
    if durable is None:
        durable = settings.state.backend == "redis"
    service = AggregatorService(
        state, store, settings.spool_dir, chunk_bytes=settings.chunks.chunk_bytes,
        keep_last=settings.store.keep_last, durable=durable,
        journal=f"leaf/{settings.name}" if settings.name else "",
        leaves=[Leaf(leaf.endpoint, leaf.public_endpoint, identity) for leaf in settings.leaves],
        distiller=distiller,
    )
    service.ready = False
    try:
        server = build_server(
            service,
            settings.grpc.host,
            settings.grpc.port,
            settings.grpc.max_workers,
            settings.grpc.stream_window_bytes,
            serving=False,
            tls=identity,
            # Agents' records are the scheduler's: only a shared (Redis) store has them.
            check_agents=settings.state.backend == "redis",
            limits=settings.limits,
            max_concurrent_rpcs=settings.grpc.max_concurrent_rpcs,
            health_port=settings.grpc.health_port,
        )
    except OSError as e:
        log.error("%s", e)
        return ExitCode.CANNOT_BIND
    if not start_metrics(settings.metrics, "aggregator"):
        return ExitCode.CANNOT_BIND
    write_port_file(settings.grpc.port_file, server.port)
    log.info("listening on %s:%d (%s, tenant %s)", settings.grpc.host, server.port,
             "mutual TLS" if identity else "PLAINTEXT", tenant)
    if settings.leaves:
        log.info("root of %d leaf aggregators: %s", len(settings.leaves), ", ".join(x.endpoint for x in settings.leaves))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    checks = {state.endpoint(): state.ping, store.endpoint(): store.ping}
    if wait_until_reachable(checks, stop):
        recovered = service.recover()
        if recovered:
            log.info("recovered %d unfinished rounds", recovered)
        service.ready = True
        server.set_serving(True)
        log.info("serving")
    while not stop.wait(1.0):
        pass
    log.info("shutting down")
    server.stop()
    return ExitCode.OK
