"""What the agent's main loop makes of a failed attempt to reach the control plane: the retry
line naming the endpoint and why (once a minute for the same failure), the backoff, a
disabled agent's slow re-checks, and the end when its protocol is refused."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from fedstream.grpcutil import error_code_of
from fedstream.pki import TlsIdentity
from fedstream_agent.identity import AgentDisabledError, CallFailed
from fedstream_agent.probes import QuietRepeats, explain
from fedstream_agent.settings import AgentSettings

log = logging.getLogger("fedstream_agent.agent")

FIRST_DELAY_S = 0.2


class ProtocolRefused(Exception):
    """The control plane does not accept this agent's protocol version; the message names both
    versions and what to upgrade."""


class Reconnect:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.delay = FIRST_DELAY_S
        # An endpoint failing the same way is logged once a minute, not at each attempt.
        self.retries = QuietRepeats(log)

    def connected(self) -> None:
        self.delay = FIRST_DELAY_S

    def wait_after(self, failure: grpc.RpcError | CallFailed | AgentDisabledError, client: TlsIdentity | None) -> float:
        """Logs a failed attempt (the endpoint and why) and returns how long to wait before
        the next. Raises ProtocolRefused when the control plane refused this agent's protocol."""
        if isinstance(failure, AgentDisabledError):
            return self._disabled(str(failure), self.settings.tls.enroll_endpoint)
        if isinstance(failure, CallFailed):
            what, endpoint, e = failure.what, failure.endpoint, failure.error
        else:
            what, endpoint, e = "scheduler", self.settings.scheduler_endpoint, failure
        code = error_code_of(e)
        if code == "agent_disabled":
            return self._disabled(e.details() or "", endpoint)
        if code == "incompatible_protocol":
            raise ProtocolRefused(f"the control plane at {endpoint} refused this agent: {e.details()}")
        delay, self.delay = self.delay, min(self.delay * 2, self.settings.reconnect_max_s)
        reason = self.why(e, endpoint, client, enrollment=what == "enrollment")
        self.retries.log(logging.WARNING, f"{what} {endpoint}: {reason}",
                         f"{what} {endpoint}: {reason}; retrying in {delay:.1f} s")
        return delay

    def _disabled(self, message: str, endpoint: str) -> float:
        wait = self.settings.disabled_recheck_s
        self.retries.log(logging.ERROR, message, f"{message} (told by {endpoint}); this agent takes no work and "
                         f"asks again every {wait:g} s until an operator enables it")
        return wait

    def why(self, e: grpc.RpcError, endpoint: str, client: TlsIdentity | None, enrollment: bool = False) -> str:
        """Why a call to ``endpoint`` (the enrollment port, with ``enrollment``) failed, probed
        (fedstream_agent.probes.explain)."""
        tls = self.settings.tls
        ca_pem = None if tls.insecure_plaintext or tls.ca_file is None else _read(tls.ca_file)
        return explain(e, endpoint, ca_pem, tls.ca_file or "", client, enrollment)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
