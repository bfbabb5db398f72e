"""Start-up readiness: a service reports NOT_SERVING until its backends answer.

An unreachable Redis or S3 endpoint at start is logged once, in one line that names it, and
retried with backoff; the process neither exits nor prints a traceback, so a pod waits for
its dependencies instead of crash-looping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from fedstream.errors import FedstreamError

log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """A URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def wait_until_reachable(
    checks: dict[str, Callable[[], None]], stop: threading.Event, max_delay_s: float = 5.0
) -> bool:
    """Runs each check until it passes; True once all have, False if ``stop`` is set first.

    A check raises FedstreamError (Unavailable) while its backend cannot be reached; each
    backend's failure is logged once, and its recovery once.
    """
    pending = dict(checks)
    reported: set[str] = set()
    delay = 0.2
    while pending:
        for name, check in list(pending.items()):
            try:
                check()
            except FedstreamError as e:
                if name not in reported:
                    log.error("cannot reach %s: %s; retrying until it answers", name, e.public)
                    reported.add(name)
                continue
            if name in reported:
                log.info("%s is reachable", name)
            del pending[name]
        if not pending:
            break
        if stop.wait(delay):
            return False
        delay = min(delay * 2, max_delay_s)
    return True
