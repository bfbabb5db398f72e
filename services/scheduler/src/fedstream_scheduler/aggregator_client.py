"""The scheduler's client of the aggregator's round control, with retries on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from fedstream.grpcutil import aio_channel
from fedstream.pki import TlsIdentity
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class AggregatorClient:
    def __init__(self, target: str, identity: TlsIdentity | None = None) -> None:
        self.target = target
        self._channel = aio_channel(target, identity)
        self._stub = pb_grpc.AggregatorControlStub(self._channel)

    async def open_round(self, plan: pb.RoundPlan, give_up_at: float) -> dict[str, str]:
        """Opens a round, retrying with backoff while the aggregator is unreachable; returns
        the participants that the aggregator sends elsewhere (to its leaves), with where."""
        delay = 0.2
        while True:
            try:
                response = await self._stub.OpenRound(plan, timeout=30)
                return dict(response.endpoints)
            except grpc.aio.AioRpcError as e:
                loop_time = asyncio.get_running_loop().time()
                if e.code() not in RETRYABLE or loop_time + delay > give_up_at:
                    raise
                log.warning("aggregator %s unreachable (%s); retrying", self.target, e.code().name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def watch_round(self, run_id: str, round_: int) -> AsyncIterator[pb.RoundEvent]:
        call = self._stub.WatchRound(pb.WatchRoundRequest(run_id=run_id, round=round_))
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()
