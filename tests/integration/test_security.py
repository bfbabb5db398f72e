"""Mutual TLS, enrollment and identity over real TLS on loopback: two tenants' control planes
(scheduler and aggregator each), agents enrolled with one-time tokens, every cross pair."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509

from fedstream.errors import AgentNotFound, AlreadyExists
from fedstream.grpcutil import channel
from fedstream.pki import CertificateAuthority, Identity, TlsIdentity, cert_pem, key_pem, make_csr, new_key
from fedstream.state import MemoryStateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream.transfer import download_model
from fedstream.v1 import aggregator_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from fedstream_agent.identity import enroll, renew
from fedstream_aggregator.server import AggregatorServer
from fedstream_aggregator.server import build_server as build_aggregator
from fedstream_aggregator.service import AggregatorService
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.server import SchedulerServer
from fedstream_scheduler.server import build_server as build_scheduler
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import buffers_of, layout_of, random_model
from fedstream_testing.support import LoopThread, plan, wait_terminal
from fedstream_testing.support import upload as upload_model

HOUR = dt.timedelta(hours=1)
# Uploads to the run the tests open, its init round.
upload = partial(upload_model, run_id="run-1", round_=0, timeout=10)


@dataclass
class ControlPlane:
    tenant: str
    ca: CertificateAuthority
    state: MemoryStateStore
    scheduler: SchedulerServer
    aggregator: AggregatorServer
    enrollment: Enrollment
    operator: TlsIdentity
    service: TlsIdentity

    @property
    def sched(self) -> str:
        return f"127.0.0.1:{self.scheduler.port}"

    @property
    def enroll_at(self) -> str:
        return f"127.0.0.1:{self.scheduler.enroll_port}"

    @property
    def agg(self) -> str:
        return f"127.0.0.1:{self.aggregator.port}"

    def enroll(self, agent_id: str) -> TlsIdentity:
        _, token = self.enrollment.create_token(agent_id, 60)
        return enroll(self.enroll_at, self.ca.cert_pem, token, agent_id)


def start_plane(tenant: str, tmp: Path, loop: LoopThread) -> ControlPlane:
    ca = CertificateAuthority.create(tenant)
    names = ("localhost", "127.0.0.1")
    state = MemoryStateStore(tenant)
    agg_identity = ca.issue_identity(Identity(tenant, "service", "aggregator"), HOUR, names)
    sched_identity = ca.issue_identity(Identity(tenant, "service", "scheduler"), HOUR, names)
    agg_service = AggregatorService(state, LocalModelStore(tmp / "models", tenant), tmp / "spool", chunk_bytes=4096)
    aggregator = build_aggregator(agg_service, "127.0.0.1", 0, max_workers=16, tls=agg_identity, health_port=0)
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=2.0)
    enrollment = Enrollment(state, ca, 3600.0)

    async def build() -> SchedulerServer:
        service = SchedulerService(state, AggregatorClient(settings.aggregator_endpoint, sched_identity), settings)
        return await build_scheduler(service, "127.0.0.1", 0, tls=sched_identity, enrollment=enrollment, enroll_port=0,
                                     health_port=0)

    scheduler = loop.run(build())
    operator = ca.issue_identity(Identity(tenant, "operator", "alice"), HOUR)
    return ControlPlane(tenant, ca, state, scheduler, aggregator, enrollment, operator, sched_identity)


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    loop = LoopThread()
    x = start_plane("alpha", tmp_path / "alpha", loop)
    y = start_plane("beta", tmp_path / "beta", loop)
    yield x, y
    for p in (x, y):
        loop.run(p.scheduler.stop(0))
        p.aggregator.stop(0)
    loop.close()


def agents_stub(target: str, identity: TlsIdentity | None) -> scheduler_pb2_grpc.AgentServiceStub:
    return scheduler_pb2_grpc.AgentServiceStub(channel(target, identity))


def register(stub: scheduler_pb2_grpc.AgentServiceStub, agent_id: str = "") -> None:
    stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(
        agent_id=agent_id, tasks=["digits"], capabilities=scheduler_pb2.Capabilities(device="cpu"))), timeout=5)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


# Enrollment.

def test_an_enrolled_agent_registers_heartbeats_and_streams_as_itself(planes):
    x, _ = planes
    ident = x.enroll("site-a")

    stub = agents_stub(x.sched, ident)
    register(stub)  # no agent_id in the message: the certificate says who
    stub.Heartbeat(scheduler_pb2.HeartbeatRequest(), timeout=5)

    rec = x.state.get_agent("site-a")
    assert ident.peer.identity == Identity("alpha", "agent", "site-a")
    assert rec.cert_serials == [ident.peer.serial] and rec.capabilities["device"] == "cpu"


def test_a_token_enrolls_once_and_its_secret_is_not_stored(planes):
    x, _ = planes
    rec, token = x.enrollment.create_token("site-a", 60)
    stored = repr(x.state.list_enrollment_tokens())
    enroll(x.enroll_at, x.ca.cert_pem, token, "site-a")

    again = code_of(lambda: enroll(x.enroll_at, x.ca.cert_pem, token, "site-a"))

    assert again == grpc.StatusCode.UNAUTHENTICATED
    assert token not in stored and rec.sha256 in stored  # only its hash was kept
    assert x.state.list_enrollment_tokens() == []


def test_expired_unknown_and_other_agents_tokens_are_refused(planes):
    x, _ = planes
    clock = [time.time()]
    x.enrollment.clock = lambda: clock[0]
    _, old = x.enrollment.create_token("", 10)
    _, other = x.enrollment.create_token("site-b", 60)
    clock[0] += 11

    assert code_of(lambda: enroll(x.enroll_at, x.ca.cert_pem, old, "site-a")) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: enroll(x.enroll_at, x.ca.cert_pem, "fse_made-up", "site-a")) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: enroll(x.enroll_at, x.ca.cert_pem, other, "site-a")) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(AgentNotFound):
        x.state.get_agent("site-a")
    # The refused token for site-b is still good for site-b.
    assert enroll(x.enroll_at, x.ca.cert_pem, other, "site-b").peer.identity.name == "site-b"


def test_a_token_not_made_for_an_id_never_takes_over_an_enrolled_agent(planes):
    x, _ = planes
    existing = x.enroll("site-a")
    register(agents_stub(x.sched, existing))
    _, unbound = x.enrollment.create_token("", 60)

    with pytest.raises(grpc.RpcError) as e:
        enroll(x.enroll_at, x.ca.cert_pem, unbound, "site-a")

    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "'site-a'" in (e.value.details() or "")
    # The agent keeps its certificate and its calls; the refused token still enrolls a new id.
    assert x.state.get_agent("site-a").cert_serials == [existing.peer.serial]
    agents_stub(x.sched, existing).Heartbeat(scheduler_pb2.HeartbeatRequest(), timeout=5)
    assert enroll(x.enroll_at, x.ca.cert_pem, unbound, "site-new").peer.identity.name == "site-new"
    agents_stub(x.sched, existing).Heartbeat(scheduler_pb2.HeartbeatRequest(), timeout=5)


def test_racing_enrollments_of_one_new_id_have_one_winner_and_it_keeps_its_certificate(planes, redis_url):
    """Sites enrolling the same new id at once, through scheduler replicas sharing one Redis,
    with tokens not made for it: one gets the id, the others are refused and revoke nothing."""
    x, _ = planes
    replicas = [Enrollment(RedisStateStore(connect(redis_url), "race"), x.enrollment.ca, 3600.0) for _ in range(6)]
    tokens = [replicas[0].create_token("", 60)[1] for _ in replicas]
    barrier, lock = threading.Barrier(len(replicas)), threading.Lock()
    won: list[str] = []
    refused: list[str] = []

    def attempt(replica: Enrollment, token: str) -> None:
        csr = make_csr(new_key(), "site-race")
        barrier.wait()
        try:
            issued = replica.enroll(token, "site-race", csr)
        except AlreadyExists as e:
            with lock:
                refused.append(e.public)
            return
        with lock:
            won.append(format(x509.load_pem_x509_certificate(issued.certificate_pem).serial_number, "x"))

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(replicas, tokens, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert len(won) == 1 and len(refused) == len(replicas) - 1
    assert replicas[0].state.get_agent("site-race").cert_serials == won


def test_a_bad_signing_request_is_refused_without_using_the_token(planes):
    x, _ = planes
    _, token = x.enrollment.create_token("site-a", 60)
    stub = scheduler_pb2_grpc.EnrollmentServiceStub(
        grpc.secure_channel(x.enroll_at, grpc.ssl_channel_credentials(root_certificates=x.ca.cert_pem)))

    for csr in (b"not a csr", b"", make_csr(new_key(), "x")[:-40]):
        with pytest.raises(grpc.RpcError) as e:
            stub.Enroll(scheduler_pb2.EnrollRequest(token=token, agent_id="site-a", csr_pem=csr), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, csr
    with pytest.raises(grpc.RpcError) as e:
        stub.Enroll(scheduler_pb2.EnrollRequest(token=token, agent_id="a/b", csr_pem=make_csr(new_key(), "x")), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert enroll(x.enroll_at, x.ca.cert_pem, token, "site-a").peer.identity.name == "site-a"


def test_the_enrollment_port_serves_nothing_else_and_the_main_port_wants_a_certificate(planes):
    x, _ = planes
    server_only = grpc.ssl_channel_credentials(root_certificates=x.ca.cert_pem)
    on_enroll_port = scheduler_pb2_grpc.AgentServiceStub(grpc.secure_channel(x.enroll_at, server_only))
    no_cert = scheduler_pb2_grpc.AgentServiceStub(grpc.secure_channel(x.sched, server_only))
    plaintext = agents_stub(x.sched, None)

    assert code_of(lambda: on_enroll_port.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="a"), timeout=5)) \
        == grpc.StatusCode.UNIMPLEMENTED
    assert code_of(lambda: no_cert.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="a"), timeout=5)) \
        == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: plaintext.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="a"), timeout=5)) \
        == grpc.StatusCode.UNAVAILABLE


def test_probes_reach_health_in_plaintext_and_nothing_else(planes):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    x, _ = planes
    for server in (x.scheduler, x.aggregator):
        probe = grpc.insecure_channel(f"127.0.0.1:{server.health_port}")
        status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert code_of(lambda: scheduler_pb2_grpc.AgentServiceStub(probe).Heartbeat(  # noqa: B023
            scheduler_pb2.HeartbeatRequest(agent_id="a"), timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


# Identity from the certificate, every pair.

def test_an_agent_cannot_act_as_another(planes):
    x, _ = planes
    a, b = x.enroll("site-a"), x.enroll("site-b")
    stub = agents_stub(x.sched, a)
    register(agents_stub(x.sched, b))

    assert code_of(lambda: register(stub, "site-b")) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="site-b"), timeout=5)) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: next(stub.ReceiveAssignments(
        scheduler_pb2.ReceiveAssignmentsRequest(agent_id="site-b"), timeout=5))) == grpc.StatusCode.PERMISSION_DENIED
    before = x.state.get_agent("site-b").last_heartbeat_unix
    assert x.state.get_agent("site-b").last_heartbeat_unix == before


def test_an_agent_cannot_upload_as_another_nor_to_a_round_it_was_not_selected_for(planes):
    x, _ = planes
    a, b = x.enroll("site-a"), x.enroll("site-b")
    control = aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, x.service))
    control.OpenRound(plan("run-1", 0, ["site-b"], kind="init"), timeout=5)

    as_b = code_of(lambda: upload(channel(x.agg, a), "site-b", random_model(0)))
    not_selected = code_of(lambda: upload(channel(x.agg, a), "", random_model(0)))
    reply = upload(channel(x.agg, b), "", random_model(0))  # the selected one, without naming itself

    assert as_b == grpc.StatusCode.PERMISSION_DENIED
    assert not_selected == grpc.StatusCode.PERMISSION_DENIED
    assert not reply.duplicate
    assert wait_terminal(control, "run-1", 0).reports[0].agent_id == "site-b"


def test_agents_cannot_drive_runs_or_rounds_and_operators_can(planes):
    x, _ = planes
    a = x.enroll("site-a")
    as_agent = scheduler_pb2_grpc.RunServiceStub(channel(x.sched, a))
    as_operator = scheduler_pb2_grpc.RunServiceStub(channel(x.sched, x.operator))
    agent_control = aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, a))
    operator_control = aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, x.operator))
    spec = scheduler_pb2.RunSpec(task="digits", rounds=1, min_agents=1, wait_for_agents_s=1, round_timeout_s=5)

    assert code_of(lambda: as_agent.StartRun(scheduler_pb2.StartRunRequest(spec=spec), timeout=5)) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: agent_control.OpenRound(plan("run-9", 0, ["site-a"], kind="init"), timeout=5)) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: operator_control.OpenRound(plan("run-9", 0, ["site-a"], kind="init"), timeout=5)) \
        == grpc.StatusCode.PERMISSION_DENIED
    assert as_operator.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id="by-alice"), timeout=5).run_id == "by-alice"
    assert x.state.list_aggregations() == [] or all(r.run_id != "run-9" for r in x.state.list_aggregations())


def test_another_tenants_certificates_reach_nothing(planes):
    x, y = planes
    stranger = y.enroll("site-a")  # same agent id, other tenant's authority
    register(agents_stub(x.sched, x.enroll("site-a")))

    assert code_of(lambda: register(agents_stub(x.sched, stranger))) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: download_model(channel(x.agg, stranger), "run-1", "")) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: scheduler_pb2_grpc.RunServiceStub(channel(x.sched, y.operator)).GetRun(
        scheduler_pb2.GetRunRequest(run_id="r"), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, y.service)).OpenRound(
        plan("run-2", 0, ["site-a"], kind="init"), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_naming_another_tenant_is_refused_even_from_the_right_authority(planes):
    x, _ = planes
    # An authority whose key is alpha's but whose certificate claims another tenant: the
    # signature verifies against alpha's CA certificate, the name does not.
    forged_ca = CertificateAuthority(x.ca.cert, x.ca.key)
    forged_ca.tenant = "beta"
    forged = forged_ca.issue_identity(Identity("beta", "agent", "site-a"), HOUR)
    forged = TlsIdentity(x.ca.cert_pem, forged.cert_pem, forged.key_pem)

    assert code_of(lambda: register(agents_stub(x.sched, forged))) == grpc.StatusCode.PERMISSION_DENIED


def test_an_expired_certificate_is_refused(planes):
    x, _ = planes
    a = x.enroll("site-a")
    key = new_key()
    cert = x.ca.issue(key.public_key(), Identity("alpha", "agent", "site-a"), dt.timedelta(minutes=-1))
    expired = TlsIdentity(x.ca.cert_pem, cert_pem(cert), key_pem(key))
    rec = x.state.get_agent("site-a")
    rec.cert_serials = [a.peer.serial, expired.peer.serial]  # listed: only its dates stop it
    x.state.put_agent(rec)

    assert code_of(lambda: register(agents_stub(x.sched, expired))) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: upload(channel(x.agg, expired), "", random_model(0))) == grpc.StatusCode.UNAVAILABLE


# Revocation and renewal.

def open_stream(target: str, identity: TlsIdentity):
    stream = agents_stub(target, identity).ReceiveAssignments(scheduler_pb2.ReceiveAssignmentsRequest(), timeout=30)
    return stream


def wait_connected(plane: ControlPlane, agent_id: str) -> None:
    give_up = time.monotonic() + 10
    while not plane.scheduler.service.agents.is_connected(agent_id):
        assert time.monotonic() < give_up, "the stream never opened"
        time.sleep(0.02)


@pytest.mark.parametrize("action,code", [
    ("disable", grpc.StatusCode.PERMISSION_DENIED), ("delete", grpc.StatusCode.UNAUTHENTICATED)])
def test_disabling_or_deleting_an_agent_refuses_its_next_call_and_closes_its_stream(planes, action, code):
    x, _ = planes
    a = x.enroll("site-a")
    stub = agents_stub(x.sched, a)
    register(stub)
    stream = open_stream(x.sched, a)
    wait_connected(x, "site-a")

    if action == "disable":
        x.scheduler.service.agents.set_disabled("site-a", True)
    else:
        x.scheduler.service.agents.delete("site-a")

    with pytest.raises(grpc.RpcError) as closed:
        next(stream)
    assert closed.value.code() == code
    assert code_of(lambda: stub.Heartbeat(scheduler_pb2.HeartbeatRequest(), timeout=5)) == code
    assert code_of(lambda: download_model(channel(x.agg, a), "run-1", "")) == code
    assert code_of(lambda: upload(channel(x.agg, a), "", random_model(0))) == code


def test_a_deleted_agent_comes_back_only_with_a_new_enrollment(planes):
    x, _ = planes
    old = x.enroll("site-a")
    x.scheduler.service.agents.delete("site-a")

    refused = code_of(lambda: register(agents_stub(x.sched, old)))
    fresh = x.enroll("site-a")
    register(agents_stub(x.sched, fresh))

    assert refused == grpc.StatusCode.UNAUTHENTICATED
    assert x.state.get_agent("site-a").cert_serials == [fresh.peer.serial]


def test_renewal_keeps_the_replaced_certificate_until_the_next_one(planes):
    x, _ = planes
    first = x.enroll("site-a")
    second = renew(channel(x.sched, first), first)
    register(agents_stub(x.sched, first))  # still current: connections opened before renewal go on
    register(agents_stub(x.sched, second))

    third = renew(channel(x.sched, second), second)

    assert second.peer.identity == third.peer.identity == first.peer.identity
    assert code_of(lambda: register(agents_stub(x.sched, first))) == grpc.StatusCode.UNAUTHENTICATED
    register(agents_stub(x.sched, third))
    assert x.state.get_agent("site-a").cert_serials == [second.peer.serial, third.peer.serial]


def test_only_agents_renew_and_a_revoked_one_cannot(planes):
    x, _ = planes
    a = x.enroll("site-a")
    x.scheduler.service.agents.set_disabled("site-a", True)

    assert code_of(lambda: renew(channel(x.sched, a), a)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: renew(channel(x.sched, x.operator), x.operator)) == grpc.StatusCode.PERMISSION_DENIED


def test_an_enrolled_agent_downloads_its_tenants_model(planes):
    x, _ = planes
    a, b = x.enroll("site-a"), x.enroll("site-b")
    control = aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, x.service))
    control.OpenRound(plan("run-1", 0, ["site-a"], kind="init"), timeout=5)
    upload(channel(x.agg, a), "", random_model(0))
    version = wait_terminal(control, "run-1", 0).version

    model = download_model(channel(x.agg, b), "run-1", version)

    want = random_model(0)
    for name, (_, arr) in want.items():
        np.testing.assert_array_equal(model.buffer.arrays()[name], arr)


def test_an_agent_revoked_while_it_uploads_does_not_count(planes):
    import threading

    from fedstream.transfer import update_requests, upload_call

    x, _ = planes
    a = x.enroll("site-a")
    control = aggregator_pb2_grpc.AggregatorControlStub(channel(x.agg, x.service))
    control.OpenRound(plan("run-1", 0, ["site-a"], kind="init", timeout=3), timeout=5)
    model = random_model(0)
    layout = layout_of(model)
    halfway, go_on = threading.Event(), threading.Event()

    def requests():
        for i, req in enumerate(update_requests(run_id="run-1", round_=0, agent_id="", layout=layout,
                                                buffers=buffers_of(layout, model), num_examples=5, metrics={},
                                                chunk_bytes=512)):
            if i == 2:
                halfway.set()
                go_on.wait(10)
            yield req

    call = upload_call(channel(x.agg, a)).future(requests(), timeout=30)
    assert halfway.wait(10)
    x.scheduler.service.agents.delete("site-a")
    go_on.set()

    with pytest.raises(grpc.RpcError) as e:
        call.result()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert x.state.get_aggregation("run-1", 0).reports == {}
