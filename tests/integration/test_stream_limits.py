"""Streams over real mutual TLS: an agent's streams are limited from its certificate when they
open, an idle upload is ended and so is a download its client stops reading, an upload still
open when its round closes is ended with it, and one whose client goes away gives its spool
space back."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fedstream.errors import RoundClosed
from fedstream.grpcutil import channel
from fedstream.pki import CertificateAuthority, Identity, TlsIdentity
from fedstream.rounds import RoundKind
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.transfer import download_call, download_model, update_requests, upload_call
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_testing.helpers import buffers_of, layout_of, random_model
from fedstream_testing.support import plan, upload, wait_terminal, wait_until

HOUR = dt.timedelta(hours=1)
RUN = "streams"
# Far more than any call here needs: a call that waits for a free thread misses it.
ANSWER_S = 10.0


@dataclass
class Plane:
    ca: CertificateAuthority
    server: AggregatorServer
    scheduler: TlsIdentity

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def agent(self, name: str) -> grpc.Channel:
        return channel(self.target, self.ca.issue_identity(Identity(self.server.service.state.tenant, "agent", name), HOUR))

    def control(self) -> pb_grpc.AggregatorControlStub:
        return pb_grpc.AggregatorControlStub(channel(self.target, self.scheduler))

    def spool_files(self) -> set[str]:
        d = self.server.service.spools.directory
        return {p.name for p in d.iterdir()} if d.is_dir() else set()


@pytest.fixture
def plane_factory(tmp_path: Path) -> Iterator:
    servers: list[AggregatorServer] = []

    def make(tenant: str, **limits) -> Plane:
        ca = CertificateAuthority.create(tenant)
        ident = ca.issue_identity(Identity(tenant, "service", "aggregator"), HOUR, ("localhost", "127.0.0.1"))
        service = AggregatorService(MemoryStateStore(tenant), LocalModelStore(tmp_path / tenant / "models", tenant),
                                    tmp_path / tenant / "spool", chunk_bytes=1024)
        server = build_server(service, "127.0.0.1", 0, max_workers=8, tls=ident, check_agents=False,
                              limits=AggregatorLimits(**limits))
        servers.append(server)
        return Plane(ca, server, ca.issue_identity(Identity(tenant, "service", "scheduler"), HOUR))

    yield make
    for s in servers:
        s.stop(0)


def hits(tenant: str, limit: str) -> float:
    return REGISTRY.get_sample_value("fedstream_limit_hits_total",
                                     {"tenant": tenant, "service": "aggregator", "limit": limit}) or 0.0


def silent(release: threading.Event) -> Iterator[bytes]:
    """An upload's requests that are nothing at all until ``release``."""
    release.wait(60)
    return
    yield b""


def header_then_stall(agent: str, model, release: threading.Event, chunks: int = 0) -> Iterator:
    """An upload that sends its header (and ``chunks`` chunks), then nothing until ``release``."""
    layout = layout_of(model)
    requests = update_requests(run_id=RUN, round_=0, agent_id=agent, layout=layout,
                               buffers=buffers_of(layout, model), num_examples=5, metrics={}, chunk_bytes=256)
    for _ in range(chunks + 1):
        yield next(requests)
    release.wait(60)


def open_init_round(p: Plane, participants: list[str], timeout: float = 30.0) -> None:
    p.control().OpenRound(plan(RUN, 0, participants, kind=RoundKind.INIT, min_updates=1, timeout=timeout),
                          timeout=ANSWER_S)


def test_an_agent_holding_its_most_idle_streams_leaves_health_control_and_other_agents_answered(plane_factory):
    p = plane_factory("st-share", streams_per_agent=2, stream_idle_s=0)
    greedy, release = p.agent("greedy"), threading.Event()

    calls = [upload_call(greedy).future(silent(release), timeout=60) for _ in range(2 + 8)]
    wait_until(lambda: sum(c.done() for c in calls) == 8, what="the streams beyond the agent's 2 were not refused")
    refused = [c for c in calls if c.done()]
    health = health_pb2_grpc.HealthStub(channel(p.target, p.scheduler)).Check(
        health_pb2.HealthCheckRequest(), timeout=ANSWER_S)
    open_init_round(p, ["site"])
    reply = upload(p.agent("site"), "", random_model(0), run_id=RUN, round_=0, timeout=ANSWER_S)

    assert {c.exception().code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("at most 2" in c.exception().details() for c in refused)
    assert p.server.slots.open("greedy") == 2 and hits("st-share", "streams_per_agent") == 8
    assert health.status == health_pb2.HealthCheckResponse.SERVING and not reply.duplicate
    release.set()


def test_more_streams_than_the_threads_for_transfers_are_refused_whoever_opens_them(plane_factory):
    p = plane_factory("st-total", streams_per_agent=2, stream_idle_s=0, control_threads=4)
    release = threading.Event()

    calls = [upload_call(p.agent(f"site-{i}")).future(silent(release), timeout=60) for i in range(3) for _ in range(2)]
    wait_until(lambda: sum(c.done() for c in calls) == 2, what="streams beyond the 4 transfer threads were let in")
    health = health_pb2_grpc.HealthStub(channel(p.target, p.scheduler)).Check(
        health_pb2.HealthCheckRequest(), timeout=ANSWER_S)

    done = [c for c in calls if c.done()]
    assert {c.exception().code() for c in done} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("at most 4" in c.exception().details() for c in done)
    assert hits("st-total", "transfer_streams") == 2 and health.status == health_pb2.HealthCheckResponse.SERVING
    release.set()


def test_an_upload_that_sends_nothing_is_ended_after_the_idle_limit(plane_factory):
    p = plane_factory("st-idle", stream_idle_s=0.5)
    release = threading.Event()

    call = upload_call(p.agent("site")).future(silent(release), timeout=60)
    error = call.exception(timeout=ANSWER_S)

    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.5 s" in error.details() and "stream_idle_s" in error.details()
    wait_until(lambda: p.server.slots.open("site") == 0)
    assert hits("st-idle", "stream_idle_s") == 1
    release.set()


def test_an_upload_stalled_after_its_header_is_ended_when_its_round_closes_and_its_spool_deleted(plane_factory):
    p = plane_factory("st-close", stream_idle_s=0)
    model, release = random_model(0), threading.Event()
    open_init_round(p, ["a", "b"], timeout=3)
    stalled = upload_call(p.agent("b")).future(header_then_stall("b", model, release), timeout=60)
    wait_until(lambda: len(p.spool_files()) == 1, what="the stalled upload reserved no spool file")
    held = p.spool_files()

    upload(p.agent("a"), "", model, run_id=RUN, round_=0, timeout=ANSWER_S)
    event = wait_terminal(p.control(), RUN, 0)
    ended = stalled.exception(timeout=2.0)  # generous: it ends as the round stops taking updates

    assert event.version and ended is not None and ended.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed with its 1 update and is not accepting updates" in ended.details()
    assert RoundClosed.is_closure(ended.details())
    wait_until(lambda: p.server.slots.open("b") == 0)
    assert not held & p.spool_files()
    release.set()


def test_an_upload_whose_client_goes_away_gives_its_spool_space_back(plane_factory):
    p = plane_factory("st-gone", stream_idle_s=0)
    model, release = random_model(0, scale=4), threading.Event()
    open_init_round(p, ["b"])
    call = upload_call(p.agent("b")).future(header_then_stall("b", model, release, chunks=2), timeout=60)
    wait_until(lambda: len(p.spool_files()) == 1, what="the upload reserved no spool file")
    held = p.spool_files()

    call.cancel()

    wait_until(lambda: not held & p.spool_files(), what=f"spool file {held} is still there")
    wait_until(lambda: p.server.slots.open("b") == 0)
    release.set()


def test_a_download_whose_client_stops_reading_is_ended_after_the_idle_limit_and_its_slot_freed(plane_factory):
    p = plane_factory("st-read", streams_per_agent=1, stream_idle_s=0.5)
    model = random_model(0, scale=10_000)  # about 8.6 MB: far more than flow control buffers
    open_init_round(p, ["site"])
    upload(p.agent("site"), "", model, run_id=RUN, round_=0, chunk_bytes=1 << 20, timeout=60)
    wait_terminal(p.control(), RUN, 0)
    site = p.agent("site")

    stalled = download_call(site)(pb.DownloadModelRequest(run_id=RUN, chunk_bytes=64 << 10), timeout=60)
    assert next(stalled).WhichOneof("payload") == "header"  # and then read nothing more
    wait_until(lambda: hits("st-read", "stream_idle_s") == 1, what="the unread download was not ended")
    wait_until(lambda: p.server.slots.open("site") == 0, what="the unread download still holds its slot")
    again = download_model(site, RUN, chunk_bytes=1 << 20, timeout=ANSWER_S)

    assert again.version
    stalled.cancel()
