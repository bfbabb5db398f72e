"""`fedstream-agent check`: the agent's way to the control plane tested step by step, one line
per step with the endpoint and OK or the precise reason, stopping at the first failure:

  dns       each endpoint's host resolves (the enrollment endpoint only when this agent must
            enroll or renew an expired certificate)
  tcp       each endpoint accepts a connection
  tls       each endpoint's certificate is signed by the CA in tls.ca_file, current, and names
            the host dialled; the scheduler accepts this agent's certificate; the enrollment
            endpoint asks for none (one that does is the scheduler's gRPC port)
  identity  the certificate in tls.identity_dir is current, or an expired one is renewed with
            its key, or the agent enrolls with its token (as the agent does at start; the
            certificate is kept for it)
  register  the scheduler registers the agent (its protocol version accepted, the agent not
            disabled)
  download  the aggregator the scheduler names answers: health SERVING, then the header and
            first chunk of the version (or run's latest) given with --model, or, without, a request for a run
            that does not exist answered NOT_FOUND by its model service (the path a download
            takes, end to end, without moving a model)

Exit codes (fedstream.exitcodes): 0 every step OK; 2 the CA file cannot be read; 5 no usable identity (no token, a refused
token, an expired certificate not renewed, the agent disabled, its certificate refused); 6 the
control plane refuses this agent's protocol version; 7 an endpoint cannot be reached (DNS, TCP,
TLS, a deadline); 1 anything else. The agent runs the same check once at start (setting
CHECK_AT_START) and logs its lines.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedstream.exitcodes import ExitCode
from fedstream.grpcutil import channel, error_code_of
from fedstream.pki import TlsIdentity
from fedstream.protocol import PROTOCOL_VERSION
from fedstream.tensors import crc32c
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc, scheduler_pb2_grpc
from fedstream_agent.identity import AgentDisabledError, CallFailed, EnrollmentError, expired
from fedstream_agent.probes import ProbeFailed, connect, explain, resolve, split_endpoint, tls_handshake

if TYPE_CHECKING:
    from fedstream_agent.agent import Agent
    from fedstream_agent.settings import AgentSettings

log = logging.getLogger(__name__)
# A run id no run is expected to have: the model service answers NOT_FOUND.
PROBE_RUN = "fedstream-check-no-such-run"


@dataclass(frozen=True)
class Step:
    name: str
    endpoint: str
    outcome: str
    # The exit code when the step failed; None when it passed.
    failed: ExitCode | None = None

    def line(self) -> str:
        return f"{self.name:<9} {self.endpoint:<22} {'FAILED: ' if self.failed is not None else 'OK: '}{self.outcome}"


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``check`` subcommand and its options."""
    parser = sub.add_parser(
        "check", help="test the way to the control plane step by step (DNS, TCP, TLS, certificate, registration, "
        "a download from the aggregator), one line each, and exit: 0 all good, else the failing step's code "
        "(5 identity, 6 protocol, 7 unreachable)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", metavar="RUN[/NNNNNN]",
                        help="a version (or a run: its latest version) whose header and first chunk the "
                        "download step fetches (default: it only reaches the aggregator's model service)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds each step may take")


def run_check_command(settings: AgentSettings, args: argparse.Namespace) -> int:
    """`fedstream-agent check`: prints one line per step; returns the exit code."""
    from fedstream_agent.agent import Agent

    try:
        agent = Agent(settings)
    except EnrollmentError as e:
        print(Step("identity", "-", str(e), ExitCode.NO_IDENTITY).line(), flush=True)
        return ExitCode.NO_IDENTITY
    code = ExitCode.OK
    for step in Checker(agent, args.model, args.timeout).steps():
        print(step.line(), flush=True)
        code = step.failed if step.failed is not None else code
    return code


def check_at_start(agent: Agent) -> None:
    """The check, its lines logged; the agent goes on whatever it finds (a control plane that
    is down may come up: its retries say why it cannot reach it)."""
    for step in Checker(agent).steps():
        if step.failed is None:
            log.info("check: %s", step.line())
        else:
            log.warning("check: %s", step.line())


class Checker:
    """The steps of one check of ``agent``'s settings (see the module's docstring)."""

    def __init__(self, agent: Agent, model: str = "", timeout: float = 5.0) -> None:
        self.agent = agent
        self.settings = agent.settings
        self.model = model
        self.timeout = timeout
        tls = self.settings.tls
        self.ca_file = tls.ca_file
        self.ca_pem: bytes | None = None
        self.ca_problem = ""
        if not tls.insecure_plaintext and tls.ca_file is not None:
            try:
                self.ca_pem = tls.ca_file.read_bytes()
            except OSError as e:
                self.ca_problem = f"cannot read {tls.ca_file} (FEDSTREAM_AGENT_TLS__CA_FILE): {e.strerror}"

    def steps(self) -> Iterator[Step]:
        """Each step's outcome in order; none after one that failed."""
        if self.ca_problem:
            yield Step("tls", "-", self.ca_problem, ExitCode.BAD_SETTINGS)
            return
        current = self.agent.identity.load() if self.agent.identity is not None else None
        endpoints = [self.settings.scheduler_endpoint]
        if self.agent.identity is not None and current is None:
            endpoints.insert(0, self.settings.tls.enroll_endpoint)
        for network_step in (self._dns, self._tcp, self._tls):
            for endpoint in endpoints:
                step = network_step(endpoint, current)
                if step is None:
                    continue
                yield step
                if step.failed is not None:
                    return
        ident, identity = self._identity()
        yield ident
        if ident.failed is not None:
            return
        reg, aggregator = self._register(identity)
        yield reg
        if reg.failed is None:
            yield self._download(aggregator, identity)

    def _dns(self, endpoint: str, _: TlsIdentity | None) -> Step:
        try:
            host, port = split_endpoint(endpoint)
            addrs = resolve(host, port)
        except ProbeFailed as e:
            return Step("dns", endpoint, e.reason, ExitCode.UNREACHABLE)
        return Step("dns", endpoint, f"{host} resolves to {', '.join(a for _, (a, _) in addrs)}")

    def _tcp(self, endpoint: str, _: TlsIdentity | None) -> Step:
        try:
            host, port = split_endpoint(endpoint)
            connect(resolve(host, port), self.timeout).close()
        except ProbeFailed as e:
            return Step("tcp", endpoint, e.reason, ExitCode.UNREACHABLE)
        return Step("tcp", endpoint, "connected")

    def _tls(self, endpoint: str, current: TlsIdentity | None) -> Step | None:
        if self.ca_pem is None:
            return None if endpoint != self.settings.scheduler_endpoint else Step(
                "tls", endpoint, "skipped: plaintext (tls.insecure_plaintext, for development only)")
        # The scheduler is shown this agent's certificate when it holds a current one; the
        # enrollment port asks for none.
        client = current if endpoint == self.settings.scheduler_endpoint else None
        try:
            host, port = split_endpoint(endpoint)
            sock = connect(resolve(host, port), self.timeout)
            outcome = tls_handshake(sock, host, self.ca_pem, self.ca_file or "", client,
                                    enrollment=endpoint == self.settings.tls.enroll_endpoint)
        except ProbeFailed as e:
            return Step("tls", endpoint, e.reason, ExitCode.UNREACHABLE)
        return Step("tls", endpoint, outcome + ("; it accepts this agent's certificate" if client else ""))

    def _identity(self) -> tuple[Step, TlsIdentity | None]:
        identity = self.agent.identity
        if identity is None:
            return Step("identity", "-", "none: plaintext (tls.insecure_plaintext, for development only)"), None
        where = identity.enroll_endpoint
        try:
            ident = identity.ensure()
        except AgentDisabledError as e:
            return Step("identity", where, str(e), ExitCode.NO_IDENTITY), None
        except EnrollmentError as e:
            return Step("identity", where, str(e), ExitCode.NO_IDENTITY), None
        except CallFailed as e:
            return Step("identity", where, self._why(e.error, where, None, enrollment=True), ExitCode.UNREACHABLE), None
        peer = ident.peer
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(peer.not_after_unix))
        action = {"loaded": f"certificate in {identity.directory}", "renewed": "expired certificate renewed with its key",
                  "enrolled": f"enrolled with the token in {identity.token_file}"}[identity.last_action]
        where = where if identity.last_action != "loaded" else str(identity.directory / "cert.pem")
        return Step("identity", where, f"{action}: {peer.identity}, valid until {until}"), ident

    def _register(self, identity: TlsIdentity | None) -> tuple[Step, str]:
        endpoint = self.settings.scheduler_endpoint
        with channel(endpoint, identity) as ch:
            try:
                reply = scheduler_pb2_grpc.AgentServiceStub(ch).Register(
                    self.agent.register_request(), timeout=self.timeout)
            except grpc.RpcError as e:
                return Step("register", endpoint, *self._refusal(e, endpoint, identity)), ""
        control = reply.protocol_version or 1
        accepts = (f"accepts {reply.oldest_agent_protocol_version} to {reply.newest_agent_protocol_version}"
                   if reply.protocol_version else "an older control plane")
        return Step("register", endpoint, f"registered as {self.agent.agent_id}: protocol {PROTOCOL_VERSION}, control "
                    f"plane protocol {control} ({accepts}); heartbeat every {reply.heartbeat_interval_s:g} s"), \
            reply.aggregator_endpoint

    def _download(self, endpoint: str, identity: TlsIdentity | None) -> Step:
        if not endpoint:
            return Step("download", "-", "skipped: the scheduler names no aggregator (a control plane of protocol 1)")
        with channel(endpoint, identity) as ch:
            try:
                health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
                if health.status != health_pb2.HealthCheckResponse.SERVING:
                    return Step("download", endpoint, "the aggregator answers but is not serving yet (it is recovering "
                                "its rounds, or its state or model store does not answer)", ExitCode.UNREACHABLE)
                return Step("download", endpoint, self._fetch(aggregator_pb2_grpc.ModelServiceStub(ch)))
            except grpc.RpcError as e:
                return Step("download", endpoint, *self._refusal(e, endpoint, identity))

    def _fetch(self, models: aggregator_pb2_grpc.ModelServiceStub) -> str:
        """The header and first chunk of ``model``; without one, a run that does not exist
        asked for, NOT_FOUND being the answer that shows the way works. Raises grpc.RpcError."""
        run_id, _, number = self.model.partition("/")
        call = models.DownloadModel(aggregator_pb2.DownloadModelRequest(
            run_id=run_id or PROBE_RUN, version=self.model if number else "", chunk_bytes=64 << 10),
            timeout=self.timeout)
        try:
            header = next(call).header
            if not self.model:
                return "health SERVING; asked its model service for no version (--model RUN/NNNNNN fetches one)"
            chunk = next(call, None)
        except grpc.RpcError as e:
            if self.model or e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return ("health SERVING; its model service answered this agent (no version fetched: "
                    "--model RUN/NNNNNN fetches one's header and first chunk)")
        finally:
            call.cancel()
        size = header.layout.total_bytes
        first = "no chunk (an empty model)"
        if chunk is not None:
            good = crc32c(chunk.chunk.data) == chunk.chunk.crc32c
            first = f"its first chunk ({len(chunk.chunk.data)} bytes, checksum {'good' if good else 'BAD'})"
        return f"health SERVING; header of {header.version} ({len(header.layout.tensors)} tensors, {size} bytes) and {first}"

    def _refusal(self, e: grpc.RpcError, endpoint: str, identity: TlsIdentity | None) -> tuple[str, ExitCode]:
        code = error_code_of(e)
        if code == "incompatible_protocol":
            return e.details() or "", ExitCode.INCOMPATIBLE_PROTOCOL
        if code == "agent_disabled":
            return e.details() or "", ExitCode.NO_IDENTITY
        if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return (f"the control plane refused this agent's certificate: {e.details()} (an operator must make a new "
                    f"enrollment token: fedstream enrollment-tokens create --agent-id {self.agent.agent_id})",
                    ExitCode.NO_IDENTITY)
        reason = self._why(e, endpoint, identity)
        return reason, ExitCode.UNREACHABLE if e.code() in (grpc.StatusCode.UNAVAILABLE,
                                                             grpc.StatusCode.DEADLINE_EXCEEDED) else ExitCode.FAILED

    def _why(self, e: grpc.RpcError, endpoint: str, identity: TlsIdentity | None, enrollment: bool = False) -> str:
        client = identity if identity is not None and not expired(identity) else None
        return explain(e, endpoint, self.ca_pem, self.ca_file or "", client, enrollment)
