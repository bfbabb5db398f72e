"""gRPC plumbing shared by the services: error translation, server factories, health."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.errors import FedstreamError
from fedstream.metrics import GRPC_CALLS_IN_PROGRESS
from fedstream.pki import TlsIdentity
from fedstream.startup import bind_error

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Long-lived streams (agents' assignment streams) must survive idle NATs and notice dead peers.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]
DEFAULT_STREAM_WINDOW_BYTES = 4 << 20
# Trailing metadata key carrying a refused call's catalog code (fedstream.errors), so that a
# client can tell refusals of one status apart (agent_disabled from permission_denied).
ERROR_CODE_KEY = "fedstream-error"


def server_options(stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES) -> list[tuple[str, int]]:
    """Server options; a fixed flow-control window per stream unless ``stream_window_bytes``
    is 0.

    A fixed window instead of one grown by bandwidth-delay probing bounds what each stream
    can have buffered (window x concurrent streams), so memory does not grow when uploads
    outpace the aggregator. 4 MiB leaves loopback and LAN throughput unchanged, and one
    upload stream fills a 100 Mbit/s link with a 150 ms round trip (docs/benchmarks.md,
    "Emulated WAN links"); a link whose bandwidth x round-trip time exceeds it needs more.
    """
    if not stream_window_bytes:
        return list(SERVER_OPTIONS)
    return [
        *SERVER_OPTIONS,
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", stream_window_bytes),
    ]


def error_code_of(error: grpc.RpcError) -> str:
    """The catalog code a fedstream server attached to a refused call; "" when none."""
    read = getattr(error, "trailing_metadata", None)  # sync and asyncio errors alike
    for key, value in (read() if callable(read) else None) or ():
        if key == ERROR_CODE_KEY:
            return str(value)
    return ""


def _status_of(err: FedstreamError, context: Any) -> tuple[grpc.StatusCode, str]:
    context.set_trailing_metadata(((ERROR_CODE_KEY, err.code),))
    if err.detail:
        log.info("%s: %s (%s)", err.code, err.public, err.detail)
    return err.grpc_code, err.public


def translate_errors(fn: F) -> F:
    """Turns a FedstreamError raised by a servicer method into its gRPC status and message.

    Works for sync and async methods, unary or streaming responses. Anything else becomes
    INTERNAL with a generic message; the traceback goes to the log only.
    """
    if inspect.isasyncgenfunction(fn):
        return _translate_async_generator(fn)  # type: ignore[return-value]
    if inspect.iscoroutinefunction(fn):
        return _translate_coroutine(fn)  # type: ignore[return-value]
    if inspect.isgeneratorfunction(fn):
        return _translate_generator(fn)  # type: ignore[return-value]
    return _translate_plain(fn)  # type: ignore[return-value]


def _unexpected(fn: Callable[..., Any], exc: BaseException) -> tuple[grpc.StatusCode, str]:
    log.error("unexpected error in %s", fn.__qualname__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


@contextlib.contextmanager
def _translating(fn: Callable[..., Any], context: grpc.ServicerContext) -> Iterator[None]:
    """Counts a call of ``fn`` in progress and aborts it with the status of what it raises."""
    GRPC_CALLS_IN_PROGRESS.inc()
    try:
        yield
    except FedstreamError as e:
        context.abort(*_status_of(e, context))
    except Exception as e:
        if _is_abort(e):
            raise
        context.abort(*_unexpected(fn, e))
    finally:
        GRPC_CALLS_IN_PROGRESS.dec()


@contextlib.asynccontextmanager
async def _translating_async(fn: Callable[..., Any], context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """``_translating`` for the methods of an asyncio server."""
    GRPC_CALLS_IN_PROGRESS.inc()
    try:
        yield
    except FedstreamError as e:
        await context.abort(*_status_of(e, context))
    except grpc.aio.AbortError:
        raise
    except Exception as e:  # noqa: BLE001 - the edge: anything else is INTERNAL, logged
        await context.abort(*_unexpected(fn, e))
    finally:
        GRPC_CALLS_IN_PROGRESS.dec()


def _translate_async_generator(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def agen(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _translating_async(fn, context):
            async for item in fn(self, request, context):
                yield item

    return agen


def _translate_coroutine(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def coro(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _translating_async(fn, context):
            return await fn(self, request, context)

    return coro


def _translate_generator(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def gen(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _translating(fn, context):
            yield from fn(self, request, context)

    return gen


def _translate_plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def plain(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _translating(fn, context):
            return fn(self, request, context)

    return plain


def _is_abort(e: BaseException) -> bool:
    # grpc's sync context.abort raises a bare Exception subclass marked by the library.
    return type(e).__name__ == "_AbortedError" or (type(e) is Exception and not e.args)


def add_health(server: Any, services: Iterable[str]) -> health.HealthServicer:
    """Adds grpc.health.v1 to a server; each named service (and "") starts NOT_SERVING."""
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *services]:
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return servicer


def set_serving(servicer: health.HealthServicer, services: Iterable[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *services]:
        servicer.set(name, status)


DEFAULT_MAX_CONCURRENT_RPCS = 4096


def make_server(
    max_workers: int,
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
) -> grpc.Server:
    """A thread-pool gRPC server with fedstream's options; message limits stay at defaults.
    Calls beyond ``max_concurrent_rpcs`` are refused (RESOURCE_EXHAUSTED), never queued
    without bound."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(stream_window_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def make_aio_server(
    stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES, max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
) -> grpc.aio.Server:
    return grpc.aio.server(options=server_options(stream_window_bytes), maximum_concurrent_rpcs=max_concurrent_rpcs)


def server_credentials(identity: TlsIdentity, client_certificates: bool = True) -> grpc.ServerCredentials:
    """TLS with ``identity``'s certificate; with ``client_certificates`` every client must
    present a certificate of the same authority (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=client_certificates,
    )


def bind(server: Any, host: str, port: int, tls: grpc.ServerCredentials | None = None, setting: str = "grpc.port") -> int:
    """Binds a port (TLS with ``tls``, plaintext without) and returns the port actually bound
    (port 0 picks one). Raises StartupError naming ``setting`` (the port's setting) when the port
    cannot be bound."""
    address = f"{host}:{port}"
    bound: int
    try:
        bound = server.add_secure_port(address, tls) if tls is not None else server.add_insecure_port(address)
    except RuntimeError:  # the asyncio server raises where the threaded one returns 0
        bound = 0
    if bound == 0:
        raise bind_error(setting, host, port)
    return bound


def write_port_file(path: Path | None, port: int) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, path)


def channel_credentials(identity: TlsIdentity) -> grpc.ChannelCredentials:
    """Mutual TLS: trust only ``identity``'s authority and present its certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem, private_key=identity.key_pem, certificate_chain=identity.cert_pem
    )


def channel(target: str, identity: TlsIdentity | None = None) -> grpc.Channel:
    """A channel to ``target``: mutual TLS with ``identity``, plaintext without."""
    if identity is None:
        return grpc.insecure_channel(target, options=KEEPALIVE_OPTIONS)
    return grpc.secure_channel(target, channel_credentials(identity), options=KEEPALIVE_OPTIONS)


def aio_channel(target: str, identity: TlsIdentity | None = None) -> grpc.aio.Channel:
    if identity is None:
        return grpc.aio.insecure_channel(target, options=KEEPALIVE_OPTIONS)
    return grpc.aio.secure_channel(target, channel_credentials(identity), options=KEEPALIVE_OPTIONS)
