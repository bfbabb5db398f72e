"""gRPC servicers of the scheduler: convert messages through fedstream.convert and delegate to
the agent registry, the run service and enrollment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from fedstream.auth import Guard
from fedstream.convert import (
    assignment_to_proto,
    kind_to_proto,
    report_to_proto,
    run_state_to_proto,
    state_to_proto,
)
from fedstream.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from fedstream.grpcutil import translate_errors
from fedstream.limits import RateLimiter
from fedstream.metrics import LIMIT_HITS
from fedstream.protocol import PROTOCOL_VERSION, accepted_range, check_agent_protocol
from fedstream.state import AgentRecord, RoundRecord, RunRecord
from fedstream.v1 import scheduler_pb2 as pb
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_scheduler.audit import Actor
from fedstream_scheduler.enrollment import Enrollment, Issued
from fedstream_scheduler.service import SchedulerService


def round_to_proto(r: RoundRecord) -> pb.RoundInfo:
    return pb.RoundInfo(
        round=r.round,
        kind=kind_to_proto(r.kind),
        state=state_to_proto(r.state),
        participants=r.participants,
        reports=[report_to_proto(rep) for rep in r.reports],
        stragglers=r.stragglers,
        base_version=r.base_version,
        version=r.version,
        reason=r.reason,
        started_unix=r.started_unix,
        finished_unix=r.finished_unix,
        metrics=r.metrics,
    )


def run_to_proto(run: RunRecord, rounds: list[RoundRecord]) -> pb.Run:
    return pb.Run(
        run_id=run.run_id,
        spec=json_format.ParseDict(run.spec, pb.RunSpec()),
        state=run_state_to_proto(run.state),
        rounds=[round_to_proto(r) for r in rounds],
        reason=run.reason,
        latest_version=run.latest_version,
    )


def spec_fields(spec: pb.RunSpec) -> dict[str, object]:
    """A run spec as the fields RunSpec validates; raises InvalidArgument when a number in its
    strategy parameters is not finite (JSON has no word for it)."""
    try:
        fields: dict[str, object] = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    except json_format.SerializeToJsonError as e:
        raise InvalidArgument(f"invalid run spec: strategy.params must hold finite numbers ({e})") from None
    return fields


def certificate_to_proto(issued: Issued) -> pb.AgentCertificate:
    return pb.AgentCertificate(
        agent_id=issued.agent_id,
        certificate_pem=issued.certificate_pem,
        ca_certificate_pem=issued.ca_certificate_pem,
        not_after_unix=issued.not_after_unix,
        renew_after_unix=issued.renew_after_unix,
    )


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Every method acts for the agent the client certificate names (fedstream.auth).
    ``protocol`` is the control plane's protocol version (fedstream.protocol)."""

    def __init__(
        self, service: SchedulerService, guard: Guard, enrollment: Enrollment, protocol: int = PROTOCOL_VERSION
    ) -> None:
        self.service = service
        self.guard = guard
        self.enrollment = enrollment
        self.protocol = protocol
        limits = service.settings.limits
        self.registrations = RateLimiter(limits.registrations_per_min / 60, 10)
        self.heartbeats = RateLimiter(limits.heartbeats_per_interval / service.settings.heartbeat_interval_s, 10)

    def _within(self, limiter: RateLimiter, agent_id: str, limit: str, what: str) -> None:
        if not limiter.try_take(agent_id):
            LIMIT_HITS.labels(self.service.state.tenant, "scheduler", limit).inc()
            raise ResourceExhausted(f"too many {what} from agent {agent_id!r}")

    @translate_errors
    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        a = request.agent
        agent_id = self.guard.agent(context, a.agent_id)
        self._within(self.registrations, agent_id, "registrations_per_min", "registrations")
        check_agent_protocol(request.protocol_version, self.protocol)
        record = AgentRecord(
            agent_id=agent_id,
            labels=dict(a.labels),
            capabilities=json_format.MessageToDict(a.capabilities, preserving_proto_field_name=True),
            tasks=list(a.tasks),
        )
        interval = self.service.agents.register(record)
        oldest, newest = accepted_range(self.protocol)
        settings = self.service.settings
        return pb.RegisterResponse(
            heartbeat_interval_s=interval,
            protocol_version=self.protocol,
            oldest_agent_protocol_version=oldest,
            newest_agent_protocol_version=newest,
            aggregator_endpoint=settings.aggregator_public_endpoint or settings.aggregator_endpoint,
        )

    @translate_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        agent_id = self.guard.agent(context, request.agent_id)
        self._within(self.heartbeats, agent_id, "heartbeats_per_interval", "heartbeats")
        self.service.agents.heartbeat(agent_id)
        reason, closed = self.service.agents.round_over(agent_id, request.run_id, request.round) if request.run_id else ("", False)
        # round_cancelled goes with round_closed too: agents older than round_closed stop their work.
        return pb.HeartbeatResponse(round_cancelled=bool(reason), reason=reason, round_closed=closed)

    @translate_errors
    async def ReceiveAssignments(
        self, request: pb.ReceiveAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AgentEvent]:
        agent_id = self.guard.agent(context, request.agent_id)
        still_allowed = (lambda: self.guard.agent(context, agent_id)) if self.guard.tls else None
        async for assignment in self.service.agents.assignments(agent_id, still_allowed):
            yield assignment_to_proto(assignment)

    @translate_errors
    async def Renew(self, request: pb.RenewRequest, context: grpc.aio.ServicerContext) -> pb.AgentCertificate:
        if not self.guard.tls:
            raise FailedPrecondition("certificates are renewed only over TLS")
        self.guard.agent(context)
        peer = self.guard.caller(context)
        return certificate_to_proto(await asyncio.to_thread(self.enrollment.renew, peer, request.csr_pem))


class EnrollmentServicer(pb_grpc.EnrollmentServiceServicer):
    def __init__(self, enrollment: Enrollment) -> None:
        self.enrollment = enrollment

    @translate_errors
    async def Enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.AgentCertificate:
        issued = await asyncio.to_thread(self.enrollment.enroll, request.token, request.agent_id, request.csr_pem)
        return certificate_to_proto(issued)

    @translate_errors
    async def RenewExpired(
        self, request: pb.RenewExpiredRequest, context: grpc.aio.ServicerContext
    ) -> pb.AgentCertificate:
        issued = await asyncio.to_thread(self.enrollment.renew_expired, request.certificate_pem, request.csr_pem)
        return certificate_to_proto(issued)


class RunServicer(pb_grpc.RunServiceServicer):
    """Operators' and services' calls; agents may not drive runs."""

    def __init__(self, service: SchedulerService, guard: Guard) -> None:
        self.service = service
        self.guard = guard

    @translate_errors
    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        caller = self.guard.require_role(context, "operator", "service")
        run = self.service.runs.start_run(spec_fields(request.spec), request.run_id, by=Actor.of_identity(caller))
        return run_to_proto(run, [])

    @translate_errors
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        self.guard.require_role(context, "operator", "service")
        return run_to_proto(*self.service.runs.get_run(request.run_id))

    @translate_errors
    async def WatchRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Run]:
        self.guard.require_role(context, "operator", "service")
        async for run, rounds in self.service.runs.watch_run(request.run_id):
            yield run_to_proto(run, rounds)

    @translate_errors
    async def CancelRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        caller = self.guard.require_role(context, "operator", "service")
        run = await self.service.runs.cancel_run(request.run_id, by=Actor.of_identity(caller))
        return run_to_proto(run, self.service.state.list_rounds(run.run_id))
