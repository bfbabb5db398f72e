"""What an agent sees of its control plane, over real mutual TLS on loopback (scheduler with
its enrollment port and aggregator, built by the factories main() uses): an expired
certificate renewed with its key within the grace period, and refused beyond it or once
revoked; a disabled agent told so; the protocol version exchanged at registration;
`fedstream-agent check` and the retry lines naming the endpoint and why."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel, error_code_of
from fedstream.pki import CertificateAuthority, Identity, TlsIdentity, make_csr, new_key
from fedstream.protocol import PROTOCOL_VERSION
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_agent.agent import Agent
from fedstream_agent.diagnose import run_check_command
from fedstream_agent.identity import AgentIdentity, EnrollmentError, enroll, renew_expired
from fedstream_agent.probes import explain
from fedstream_agent.reconnect import ProtocolRefused
from fedstream_agent.settings import AgentSettings, AgentTlsSettings
from fedstream_aggregator.server import AggregatorServer
from fedstream_aggregator.server import build_server as build_aggregator
from fedstream_aggregator.service import AggregatorService
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.server import SchedulerServer
from fedstream_scheduler.server import build_server as build_scheduler
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.support import LoopThread, wait_until

HOUR = dt.timedelta(hours=1)


@dataclass
class TlsPlane:
    tenant: str
    ca: CertificateAuthority
    ca_file: Path
    state: MemoryStateStore
    models: LocalModelStore
    scheduler: SchedulerServer
    aggregator: AggregatorServer
    enrollment: Enrollment

    @property
    def sched(self) -> str:
        return f"127.0.0.1:{self.scheduler.port}"

    @property
    def enroll_at(self) -> str:
        return f"127.0.0.1:{self.scheduler.enroll_port}"

    @property
    def agg(self) -> str:
        return f"127.0.0.1:{self.aggregator.port}"

    def token(self, agent_id: str) -> str:
        return self.enrollment.create_token(agent_id, 600)[1]

    def stop(self, loop: LoopThread) -> None:
        loop.run(self.scheduler.stop(0))
        self.aggregator.stop(0)


def start_tls_plane(tenant: str, tmp: Path, loop: LoopThread, protocol: int = PROTOCOL_VERSION) -> TlsPlane:
    """Scheduler and aggregator of ``tenant`` sharing one in-process state store; the CA's
    certificate written to ``tmp/ca.pem``. ``protocol``: the scheduler's protocol version."""
    ca = CertificateAuthority.create(tenant)
    tmp.mkdir(parents=True, exist_ok=True)
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    names = ("localhost", "127.0.0.1")
    state = MemoryStateStore(tenant)
    models = LocalModelStore(tmp / "models", tenant)
    agg_identity = ca.issue_identity(Identity(tenant, "service", "aggregator"), HOUR, names)
    sched_identity: TlsIdentity = ca.issue_identity(Identity(tenant, "service", "scheduler"), HOUR, names)
    aggregator = build_aggregator(AggregatorService(state, models, tmp / "spool", chunk_bytes=4096),
                                  "127.0.0.1", 0, max_workers=16, tls=agg_identity)
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=2.0)
    enrollment = Enrollment(state, ca, 3600.0)

    async def build() -> SchedulerServer:
        service = SchedulerService(state, AggregatorClient(settings.aggregator_endpoint, sched_identity), settings)
        return await build_scheduler(service, "127.0.0.1", 0, tls=sched_identity, enrollment=enrollment,
                                     enroll_port=0, protocol=protocol)

    return TlsPlane(tenant, ca, ca_file, state, models, loop.run(build()), aggregator, enrollment)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def plane(tmp_path: Path, loop: LoopThread) -> Iterator[TlsPlane]:
    p = start_tls_plane("alpha", tmp_path / "alpha", loop)
    yield p
    p.stop(loop)


def short_lived(plane: TlsPlane, agent_id: str, directory: Path) -> TlsIdentity:
    """An identity enrolled with a certificate of one second, saved in ``directory``, expired."""
    plane.enrollment.cert_lifetime_s = 1.0
    ident = enroll(plane.enroll_at, plane.ca.cert_pem, plane.token(agent_id), agent_id)
    plane.enrollment.cert_lifetime_s = 3600.0
    ident.save(directory)
    wait_until(lambda: ident.peer.not_after_unix < time.time(), 5, "the certificate did not expire")
    return ident


def identity_of_dir(plane: TlsPlane, directory: Path, agent_id: str = "site-a",
                    token_file: Path | None = None) -> AgentIdentity:
    return AgentIdentity(directory, agent_id, plane.ca_file, plane.enroll_at, token_file)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def register(target: str, identity: TlsIdentity | None, version: int = 0) -> scheduler_pb2.RegisterResponse:
    with channel(target, identity) as ch:
        return scheduler_pb2_grpc.AgentServiceStub(ch).Register(scheduler_pb2.RegisterRequest(
            agent=scheduler_pb2.AgentInfo(tasks=["digits"]), protocol_version=version), timeout=5)


# Renewal of a certificate that expired while the agent was offline.

def test_an_expired_certificate_is_renewed_with_its_key_without_a_token(plane, tmp_path):
    old = short_lived(plane, "site-a", tmp_path / "id")

    agent_identity = identity_of_dir(plane, tmp_path / "id")  # no token file
    fresh = agent_identity.ensure()

    assert agent_identity.last_action == "renewed"
    assert fresh.key_pem == old.key_pem and fresh.peer.serial != old.peer.serial
    assert fresh.peer.not_after_unix > time.time() + 3000
    assert TlsIdentity.load(tmp_path / "id") == fresh
    assert plane.state.get_agent("site-a").cert_serials == [fresh.peer.serial]
    assert register(plane.sched, fresh).heartbeat_interval_s > 0
    # The expired certificate is retired: the same request cannot be used again.
    again = refusal(lambda: renew_expired(plane.enroll_at, plane.ca.cert_pem, old))
    assert again.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked or replaced" in again.details()


def test_beyond_the_grace_the_agent_is_told_to_get_a_new_token(plane, tmp_path):
    old = short_lived(plane, "site-a", tmp_path / "id")
    plane.enrollment.clock = lambda: time.time() + 31 * 86400  # a month offline

    refused = refusal(lambda: renew_expired(plane.enroll_at, plane.ca.cert_pem, old))
    with pytest.raises(EnrollmentError) as agent_error:
        identity_of_dir(plane, tmp_path / "id").ensure()

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and error_code_of(refused) == "renewal_refused"
    assert "beyond the renewal grace of 30.0 days (enrollment.renewal_grace_s)" in refused.details()
    assert "fedstream enrollment-tokens create --agent-id site-a" in str(agent_error.value)
    assert plane.state.get_agent("site-a").cert_serials == [old.peer.serial]  # nothing changed


def test_a_token_still_enrolls_an_agent_whose_renewal_is_refused(plane, tmp_path):
    short_lived(plane, "site-a", tmp_path / "id")
    plane.enrollment.renewal_grace_s = 0.0
    token_file = tmp_path / "token"
    token_file.write_text(plane.token("site-a"))

    agent_identity = identity_of_dir(plane, tmp_path / "id", token_file=token_file)
    fresh = agent_identity.ensure()

    assert agent_identity.last_action == "enrolled"
    assert register(plane.sched, fresh).heartbeat_interval_s > 0


@pytest.mark.parametrize(("operator_did", "code", "says"), [
    ("delete", grpc.StatusCode.UNAUTHENTICATED, "is not enrolled (or was deleted)"),
    ("disable", grpc.StatusCode.PERMISSION_DENIED, "agent 'site-a' is disabled by an operator"),
    ("re-enroll", grpc.StatusCode.UNAUTHENTICATED, "was revoked or replaced"),
])
def test_a_revoked_deleted_or_disabled_agent_cannot_renew(plane, tmp_path, operator_did, code, says):
    old = short_lived(plane, "site-a", tmp_path / "id")
    agents = plane.scheduler.service.agents
    if operator_did == "delete":
        agents.delete("site-a")
    elif operator_did == "disable":
        agents.set_disabled("site-a", True)
    else:
        enroll(plane.enroll_at, plane.ca.cert_pem, plane.token("site-a"), "site-a")

    refused = refusal(lambda: renew_expired(plane.enroll_at, plane.ca.cert_pem, old))

    assert refused.code() == code and says in refused.details()


def test_renewal_needs_the_certificates_own_key_and_authority(plane, tmp_path):
    old = short_lived(plane, "site-a", tmp_path / "id")
    stranger = CertificateAuthority.create("alpha").issue_identity(Identity("alpha", "agent", "site-a"), HOUR)

    def renew_with(cert_pem: bytes, csr_pem: bytes) -> None:
        with grpc.secure_channel(plane.enroll_at, grpc.ssl_channel_credentials(plane.ca.cert_pem)) as ch:
            scheduler_pb2_grpc.EnrollmentServiceStub(ch).RenewExpired(
                scheduler_pb2.RenewExpiredRequest(certificate_pem=cert_pem, csr_pem=csr_pem), timeout=5)

    wrong_key = refusal(lambda: renew_with(old.cert_pem, make_csr(new_key(), "site-a")))
    forged = refusal(lambda: renew_with(stranger.cert_pem, make_csr(new_key(), "site-a")))
    garbage = refusal(lambda: renew_with(b"not a certificate", make_csr(new_key(), "site-a")))

    assert wrong_key.code() == grpc.StatusCode.UNAUTHENTICATED and "not signed by the certificate's key" in wrong_key.details()
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED and "not issued by tenant 'alpha'" in forged.details()
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert plane.state.get_agent("site-a").cert_serials == [old.peer.serial]


# A disabled agent is told so.

def agent_settings(plane: TlsPlane, tmp: Path, **changes: object) -> AgentSettings:
    token_file = tmp / "token"
    token_file.write_text(plane.token("site-a"))
    tls = AgentTlsSettings(ca_file=plane.ca_file, identity_dir=tmp / "id", enrollment_token_file=token_file,
                           enroll_endpoint=plane.enroll_at)
    base = AgentSettings(agent_id="site-a", scheduler_endpoint=plane.sched, tls=tls, device="cpu", cpu_threads=1,
                         reconnect_max_s=0.5)
    return base.model_copy(update=changes)


def test_an_agent_back_after_its_certificate_expired_renews_and_registers_without_a_token(plane, tmp_path, caplog):
    old = short_lived(plane, "site-a", tmp_path / "id")  # expired while the site was offline
    settings = agent_settings(plane, tmp_path)
    settings.tls.enrollment_token_file = None
    agent = Agent(settings)
    worker = threading.Thread(target=agent.run, daemon=True)

    with caplog.at_level(logging.INFO, logger="fedstream_agent"):
        worker.start()
        wait_until(lambda: "registered with" in caplog.text, 30, "the agent did not come back")
    agent.shutdown()
    worker.join(10)

    renewed = TlsIdentity.load(tmp_path / "id")
    assert renewed.key_pem == old.key_pem and renewed.peer.not_after_unix > time.time()
    assert plane.state.get_agent("site-a").cert_serials == [renewed.peer.serial]
    assert "renewing it with its key" in caplog.text


def test_a_disabled_agent_is_refused_with_a_message_that_says_so(plane, tmp_path):
    ident = enroll(plane.enroll_at, plane.ca.cert_pem, plane.token("site-a"), "site-a")
    plane.scheduler.service.agents.set_disabled("site-a", True)

    refused = refusal(lambda: register(plane.sched, ident))

    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == "agent 'site-a' is disabled by an operator"
    assert error_code_of(refused) == "agent_disabled"


def test_a_disabled_agent_logs_it_waits_and_comes_back_when_enabled(plane, tmp_path, caplog):
    agent = Agent(agent_settings(plane, tmp_path, disabled_recheck_s=0.3))
    worker = threading.Thread(target=agent.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="fedstream_agent"):
        worker.start()
        wait_until(lambda: "registered with" in caplog.text, 30, "the agent did not register")
        plane.scheduler.service.agents.set_disabled("site-a", True)
        wait_until(lambda: "is disabled by an operator" in caplog.text, 10, "the agent was not told")
        time.sleep(1.0)  # several re-checks: one line
        lines = [r.getMessage() for r in caplog.records if "disabled by an operator" in r.getMessage()]
        caplog.clear()
        plane.scheduler.service.agents.set_disabled("site-a", False)
        wait_until(lambda: "registered with" in caplog.text, 10, "the agent did not come back")
    agent.shutdown()
    worker.join(10)

    assert len(lines) == 1 and "asks again every 0.3 s until an operator enables it" in lines[0]
    assert worker.is_alive() is False


# The protocol version exchanged at registration.

def test_an_agent_that_sends_no_version_is_accepted_and_told_the_control_planes(plane, tmp_path):
    ident = enroll(plane.enroll_at, plane.ca.cert_pem, plane.token("site-a"), "site-a")

    reply = register(plane.sched, ident)  # an agent from before the field

    assert (reply.protocol_version, reply.oldest_agent_protocol_version, reply.newest_agent_protocol_version) == (
        PROTOCOL_VERSION, PROTOCOL_VERSION - 1, PROTOCOL_VERSION)
    assert reply.aggregator_endpoint == plane.agg


def test_an_agent_newer_than_the_control_plane_is_refused_naming_both_versions(plane):
    ident = enroll(plane.enroll_at, plane.ca.cert_pem, plane.token("site-a"), "site-a")

    refused = refusal(lambda: register(plane.sched, ident, PROTOCOL_VERSION + 1))

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and error_code_of(refused) == "incompatible_protocol"
    assert (f"this agent speaks fedstream protocol {PROTOCOL_VERSION + 1}, newer than the control plane's protocol "
            f"{PROTOCOL_VERSION}") in refused.details()
    assert "upgrade the control plane first" in refused.details()


def test_agents_older_than_the_control_plane_accepts_are_refused_and_the_agent_stops(tmp_path, loop):
    newer = start_tls_plane("alpha", tmp_path / "newer", loop, protocol=PROTOCOL_VERSION + 2)
    try:
        ident = enroll(newer.enroll_at, newer.ca.cert_pem, newer.token("site-a"), "site-a")
        unversioned = refusal(lambda: register(newer.sched, ident))
        current = refusal(lambda: register(newer.sched, ident, PROTOCOL_VERSION))
        accepted = register(newer.sched, ident, PROTOCOL_VERSION + 1)
        agent = Agent(agent_settings(newer, tmp_path))
        with pytest.raises(ProtocolRefused) as stopped:
            agent.run()
    finally:
        newer.stop(loop)

    for refused, version in ((unversioned, 1), (current, PROTOCOL_VERSION)):
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"this agent speaks fedstream protocol {version}, older than" in refused.details()
        assert "upgrade the agent" in refused.details()
    assert accepted.protocol_version == PROTOCOL_VERSION + 2
    assert f"the control plane at {newer.sched} refused this agent" in str(stopped.value)
    assert "upgrade the agent" in str(stopped.value)


# fedstream-agent check.

def check(settings: AgentSettings, capsys, model: str = "") -> tuple[int, list[tuple[str, str, str]]]:
    """The check's exit code and its lines as (step, endpoint, outcome)."""
    code = run_check_command(settings, argparse.Namespace(model=model, timeout=5.0))
    lines = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()]
    return code, [(step, endpoint, outcome) for step, endpoint, outcome in lines]


def test_a_new_agent_passes_every_step_in_order(plane, tmp_path, capsys):
    code, lines = check(agent_settings(plane, tmp_path), capsys)

    assert code == 0, lines
    assert [(step, endpoint) for step, endpoint, _ in lines] == [
        ("dns", plane.enroll_at), ("dns", plane.sched), ("tcp", plane.enroll_at), ("tcp", plane.sched),
        ("tls", plane.enroll_at), ("tls", plane.sched), ("identity", plane.enroll_at), ("register", plane.sched),
        ("download", plane.agg)]
    assert all(outcome.startswith("OK: ") for _, _, outcome in lines)
    assert "enrolled with the token" in lines[6][2] and "agent 'site-a' of tenant 'alpha'" in lines[6][2]
    assert f"control plane protocol {PROTOCOL_VERSION}" in lines[7][2]
    assert "its model service answered this agent" in lines[8][2]


def test_an_enrolled_agent_checks_its_certificate_and_fetches_a_versions_first_chunk(plane, tmp_path, capsys):
    settings = agent_settings(plane, tmp_path)
    check(settings, capsys)  # enrolls
    store_model(plane.models, "run-1/000001", random_model())

    code, lines = check(settings, capsys, model="run-1/000001")

    assert code == 0, lines
    assert [step for step, _, _ in lines] == ["dns", "tcp", "tls", "identity", "register", "download"]
    assert "it accepts this agent's certificate" in lines[2][2]
    assert lines[3][1] == str(tmp_path / "id" / "cert.pem")
    assert "header of run-1/000001" in lines[5][2] and "checksum good" in lines[5][2]


def test_another_tenants_ca_fails_the_tls_step_naming_the_file_and_the_issuer(plane, tmp_path, loop, capsys):
    other = start_tls_plane("beta", tmp_path / "beta", loop)
    other.stop(loop)
    settings = agent_settings(plane, tmp_path)
    settings.tls.ca_file = other.ca_file

    code, lines = check(settings, capsys)

    assert code == 7
    assert lines[-1][:2] == ("tls", plane.enroll_at)
    assert lines[-1][2].startswith(f"FAILED: the server's certificate is not signed by the CA in {other.ca_file} "
                                   "(issuer: CN=fedstream alpha CA,O=alpha")
    assert [step for step, _, _ in lines] == ["dns", "dns", "tcp", "tcp", "tls"]


def test_a_wrong_enrollment_endpoint_or_a_mistyped_host_fails_where_it_is(plane, tmp_path, capsys):
    wrong_port = agent_settings(plane, tmp_path)
    wrong_port.tls.enroll_endpoint = plane.agg.rsplit(":", 1)[0] + ":1"
    typo = agent_settings(plane, tmp_path, scheduler_endpoint="no-such-host.invalid:50051")

    refused_code, refused = check(wrong_port, capsys)
    typo_code, unresolved = check(typo, capsys)

    assert refused_code == 7 and refused[-1][:2] == ("tcp", "127.0.0.1:1")
    assert "connection refused (nothing listens there)" in refused[-1][2]
    assert typo_code == 7 and unresolved[-1][:2] == ("dns", "no-such-host.invalid:50051")
    assert "FAILED: host 'no-such-host.invalid' does not resolve" in unresolved[-1][2]


def test_an_enrollment_endpoint_at_the_schedulers_grpc_port_is_named_as_such(plane, tmp_path, capsys):
    settings = agent_settings(plane, tmp_path)
    settings.tls.enroll_endpoint = plane.sched

    code, lines = check(settings, capsys)
    failed = refusal(lambda: enroll(plane.sched, plane.ca.cert_pem, plane.token("site-a"), "site-a"))
    reason = explain(failed, plane.sched, plane.ca.cert_pem, plane.ca_file, None, enrollment=True)

    assert code == 7 and lines[-1][:2] == ("tls", plane.sched), lines
    for said in (lines[-1][2], reason):
        assert "the server asks for a client certificate" in said, said
        assert said.endswith("looks like the scheduler's gRPC port, not its enrollment port (default 50053): set "
                             "FEDSTREAM_AGENT_TLS__ENROLL_ENDPOINT to the enrollment port"), said
    assert explain(failed, plane.sched, plane.ca.cert_pem, plane.ca_file, None).startswith("unavailable (")


def test_a_missing_token_file_is_named_at_the_identity_step(plane, tmp_path, capsys):
    settings = agent_settings(plane, tmp_path)
    settings.tls.enrollment_token_file = tmp_path / "nofile"

    code, lines = check(settings, capsys)

    assert code == 5 and lines[-1][0] == "identity", lines
    assert lines[-1][2] == (f"FAILED: no certificate in {tmp_path / 'id'} and no enrollment token: the token file "
                            f"{tmp_path / 'nofile'} does not exist")


def test_a_disabled_agent_fails_the_registration_step(plane, tmp_path, capsys):
    settings = agent_settings(plane, tmp_path)
    check(settings, capsys)
    plane.scheduler.service.agents.set_disabled("site-a", True)

    code, lines = check(settings, capsys)

    assert code == 5 and lines[-1] == ("register", plane.sched, "FAILED: agent 'site-a' is disabled by an operator")


# Retry lines name the endpoint that fails and why, once a minute for the same failure.

def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


def run_until_retried(agent: Agent, caplog) -> None:
    """Runs the agent until it logged a retry, then a second more: several attempts at
    reconnect_max_s=0.2."""
    worker = threading.Thread(target=agent.run, daemon=True)
    worker.start()
    wait_until(lambda: retry_lines(caplog), 30, "the agent logged no retry")
    time.sleep(1.0)
    agent.shutdown()
    worker.join(10)


def test_an_agent_with_another_tenants_ca_says_which_endpoint_and_why_once(plane, tmp_path, loop, caplog):
    other = start_tls_plane("beta", tmp_path / "beta", loop)
    other.stop(loop)
    settings = agent_settings(plane, tmp_path, reconnect_max_s=0.2)
    settings.tls.ca_file = other.ca_file

    with caplog.at_level(logging.WARNING, logger="fedstream_agent"):
        run_until_retried(Agent(settings), caplog)

    lines = retry_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"enrollment {plane.enroll_at}: tls: the server's certificate is not signed by the CA "
                               f"in {other.ca_file}")


def test_an_unreachable_scheduler_is_named_with_the_reason(tmp_path, loop, caplog):
    gone = start_tls_plane("alpha", tmp_path / "alpha", loop)
    settings = agent_settings(gone, tmp_path, reconnect_max_s=0.2)
    enroll(gone.enroll_at, gone.ca.cert_pem, gone.token("site-a"), "site-a").save(tmp_path / "id")
    gone.stop(loop)

    with caplog.at_level(logging.WARNING, logger="fedstream_agent"):
        run_until_retried(Agent(settings), caplog)

    lines = retry_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"scheduler {gone.sched}: tcp: 127.0.0.1 port {gone.scheduler.port}: connection refused")


def test_a_certificate_the_scheduler_refuses_is_named_as_the_reason(plane):
    stranger = CertificateAuthority.create("alpha").issue_identity(Identity("alpha", "agent", "site-a"), HOUR)
    presented = TlsIdentity(plane.ca.cert_pem, stranger.cert_pem, stranger.key_pem)  # trusts the right CA

    failed = refusal(lambda: register(plane.sched, presented))
    reason = explain(failed, plane.sched, plane.ca.cert_pem, plane.ca_file, presented)

    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert reason.startswith("tls: the server refused this agent's certificate (")
