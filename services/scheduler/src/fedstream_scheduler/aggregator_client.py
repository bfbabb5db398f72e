"""The aggregator's round control over gRPC (RoundControl), with retries on UNAVAILABLE.

Converts plans and snapshots through ``fedstream.convert`` and gRPC failures into the errors
of ``fedstream.errors``, so that nothing past this client sees protobuf or gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import grpc

from fedstream.convert import plan_to_proto, state_from_proto
from fedstream.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    FedstreamError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    RoundNotFound,
    Unauthenticated,
    Unavailable,
)
from fedstream.events import joined_snapshots
from fedstream.grpcutil import aio_channel
from fedstream.pki import TlsIdentity
from fedstream.rounds import RoundPlan, RoundSnapshot
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

_ERRORS: dict[grpc.StatusCode, type[FedstreamError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument, DataLoss, RoundNotFound, FailedPrecondition, AlreadyExists, PermissionDenied,
        Unauthenticated, Aborted, ResourceExhausted, Unavailable,
    )
}
_ERRORS[grpc.StatusCode.DEADLINE_EXCEEDED] = Unavailable


def error_from_rpc(e: grpc.aio.AioRpcError) -> FedstreamError:
    """The catalog's error for a failed call: the aggregator's message as public text, the
    status name as detail."""
    code = e.code()
    return _ERRORS.get(code, FedstreamError)(e.details() or code.name, detail=code.name)


class AggregatorClient:
    """RoundControl over the aggregator's gRPC AggregatorControl service."""

    def __init__(self, target: str, identity: TlsIdentity | None = None) -> None:
        self.target = target
        self._channel = aio_channel(target, identity)
        self._stub = pb_grpc.AggregatorControlStub(self._channel)

    async def open_round(self, plan: RoundPlan, give_up_at: float) -> dict[str, str]:
        """See RoundControl.open_round."""
        message = plan_to_proto(plan)
        delay = 0.2
        while True:
            try:
                response = await self._stub.OpenRound(message, timeout=30)
                return dict(response.endpoints)
            except grpc.aio.AioRpcError as e:
                loop_time = asyncio.get_running_loop().time()
                if e.code() not in RETRYABLE or loop_time + delay > give_up_at:
                    raise error_from_rpc(e) from None
                log.warning("aggregator %s unreachable (%s); retrying", self.target, e.code().name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def abort_round(self, run_id: str, round_: int, reason: str, give_up_at: float) -> RoundSnapshot:
        """See RoundControl.abort_round."""
        request = pb.AbortRoundRequest(run_id=run_id, round=round_, reason=reason)
        delay = 0.2
        while True:
            try:
                # Long enough for a commit that was already making its version visible.
                reply = await self._stub.AbortRound(request, timeout=90)
                return RoundSnapshot(run_id, round_, state_from_proto(reply.state), [], [], reply.version, reply.reason)
            except grpc.aio.AioRpcError as e:
                loop_time = asyncio.get_running_loop().time()
                if e.code() not in RETRYABLE or loop_time + delay > give_up_at:
                    raise error_from_rpc(e) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def watch_round(self, run_id: str, round_: int) -> AsyncGenerator[RoundSnapshot, None]:
        """See RoundControl.watch_round. Events in a state the vocabulary does not know are
        skipped."""
        call = self._stub.WatchRound(pb.WatchRoundRequest(run_id=run_id, round=round_))
        try:
            async for snapshot in joined_snapshots(call):
                yield snapshot
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()
