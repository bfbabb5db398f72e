"""Logging set-up: plain or JSON lines, with run/round/agent ids carried by context."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_context: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "fedstream_log_context", default=None
)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Adds fields (run_id, round, agent_id) to every record logged inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = _context.get() or {}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "ctx", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "ctx", {})
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


def setup_logging(level: str = "INFO", json_format: bool = False, service: str = "", grpc_logs: bool = True) -> None:
    """One handler on stderr for every logger. Without ``grpc_logs`` the ``grpc`` Python
    logger's records are dropped (a service's settings ``log.grpc``; see ``quiet_grpc``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            PlainFormatter(f"%(asctime)s %(levelname)s {service or '%(name)s'}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(logging.NOTSET if grpc_logs else logging.CRITICAL + 1)


def quiet_grpc(prefix: str) -> None:
    """Imports gRPC with its C core's logging off (``GRPC_VERBOSITY=NONE``), unless the service's
    ``<prefix>LOG__GRPC`` is true or ``GRPC_VERBOSITY`` is set: gRPC reads it once, when it is
    imported, and would otherwise print its own lines (a port it cannot bind, absl's notices)
    beside the service's, which say what matters themselves. The environment is left as it was,
    so processes started from this one decide for themselves.

    Called by each service's package before anything imports gRPC; a no-op once it is imported.
    """
    asked = os.environ.get(f"{prefix}LOG__GRPC", "").strip().lower() in ("1", "true", "yes", "on", "t", "y")
    if asked or "grpc" in sys.modules or "GRPC_VERBOSITY" in os.environ:
        return
    os.environ["GRPC_VERBOSITY"] = "NONE"
    try:
        import grpc  # noqa: F401  (gRPC reads GRPC_VERBOSITY here)
    finally:
        del os.environ["GRPC_VERBOSITY"]
