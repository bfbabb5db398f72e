"""gRPC servicers of the scheduler: translate messages and delegate to SchedulerService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from fedstream.grpcutil import translate_errors
from fedstream.state import AgentRecord, RoundRecord, RunRecord
from fedstream.v1 import round_pb2
from fedstream.v1 import scheduler_pb2 as pb
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_scheduler.service import KIND_PROTO, SchedulerService

_ROUND_STATES = {
    "open": round_pb2.ROUND_STATE_OPEN,
    "training": round_pb2.ROUND_STATE_TRAINING,
    "aggregating": round_pb2.ROUND_STATE_AGGREGATING,
    "committed": round_pb2.ROUND_STATE_COMMITTED,
    "failed": round_pb2.ROUND_STATE_FAILED,
}
_RUN_STATES = {
    "running": pb.RUN_STATE_RUNNING,
    "succeeded": pb.RUN_STATE_SUCCEEDED,
    "failed": pb.RUN_STATE_FAILED,
    "cancelled": pb.RUN_STATE_CANCELLED,
}


def round_to_proto(r: RoundRecord) -> pb.RoundInfo:
    return pb.RoundInfo(
        round=r.round,
        kind=KIND_PROTO[r.kind],
        state=_ROUND_STATES[r.state],
        participants=r.participants,
        reports=[round_pb2.UpdateReport(**rep) for rep in r.reports],
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
        state=_RUN_STATES[run.state],
        rounds=[round_to_proto(r) for r in rounds],
        reason=run.reason,
        latest_version=run.latest_version,
    )


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    @translate_errors
    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        a = request.agent
        record = AgentRecord(
            agent_id=a.agent_id,
            labels=dict(a.labels),
            capabilities=json_format.MessageToDict(a.capabilities, preserving_proto_field_name=True),
            tasks=list(a.tasks),
        )
        interval = self.service.register(record)
        return pb.RegisterResponse(heartbeat_interval_s=interval)

    @translate_errors
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        self.service.heartbeat(request.agent_id)
        return pb.HeartbeatResponse()

    @translate_errors
    async def ReceiveAssignments(
        self, request: pb.ReceiveAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AgentEvent]:
        async for event in self.service.assignments(request.agent_id):
            yield event


class RunServicer(pb_grpc.RunServiceServicer):
    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    @translate_errors
    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        fields = json_format.MessageToDict(request.spec, preserving_proto_field_name=True)
        run = self.service.start_run(fields, request.run_id)
        return run_to_proto(run, [])

    @translate_errors
    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        return run_to_proto(*self.service.get_run(request.run_id))

    @translate_errors
    async def WatchRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Run]:
        async for run, rounds in self.service.watch_run(request.run_id):
            yield run_to_proto(run, rounds)

    @translate_errors
    async def CancelRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        run = await self.service.cancel_run(request.run_id)
        return run_to_proto(run, self.service.state.list_rounds(run.run_id))
