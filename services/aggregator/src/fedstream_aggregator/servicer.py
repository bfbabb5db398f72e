"""gRPC servicers of the aggregator: translate messages and delegate to AggregatorService."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import grpc
from grpc._cython import cygrpc

from fedstream import convert, wire
from fedstream.auth import Guard
from fedstream.errors import FedstreamError, InvalidArgument, StreamEnded
from fedstream.events import report_pages, snapshot_to_events
from fedstream.grpcutil import translate_errors
from fedstream.limits import RateLimiter, StreamSlots
from fedstream.metrics import LIMIT_HITS
from fedstream.provenance import Provenance
from fedstream.tensors import Layout
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import tensor_pb2
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.streams import StreamWatch, WatchedStream


class ModelServicer(pb_grpc.ModelServiceServicer):
    """Enrolled agents of the tenant (and its services and operators) download its models."""

    def __init__(self, service: AggregatorService, guard: Guard, slots: StreamSlots, watch: StreamWatch) -> None:
        self.service = service
        self.guard = guard
        self.slots = slots
        self.watch = watch

    @translate_errors
    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadModelResponse | wire.ChunkFrame | wire.EncodedChunk]:
        agent = ""
        if not self.guard.tls or self.guard.caller(context).identity.role == "agent":
            agent = self.guard.agent(context)
        with self.slots.hold(agent or None, self._limited), watched(self.watch, context, "took nothing") as stream:
            info, chunks = self.service.open_model(
                request.run_id, request.version, request.chunk_bytes, request.offset
            )
            # Each yield returns once flow control lets the message out: the client's turn is
            # the yield (a client that stops reading is ended by the watch); reading and
            # checking the next block is the server's.
            stream.touch()
            yield pb.DownloadModelResponse(
                header=pb.ModelHeader(
                    version=info.version, layout=info.layout.to_proto(), metadata=info.metadata,
                    offset=request.offset,
                )
            )
            stream.hold()
            for message in chunks:
                stream.touch()
                yield message
                stream.hold()

    def _limited(self, limit: str) -> None:
        LIMIT_HITS.labels(self.service.state.tenant, "aggregator", limit).inc()


@contextmanager
def watched(watch: StreamWatch, context: grpc.ServicerContext, idle: str) -> Iterator[WatchedStream]:
    """The call watched by ``watch`` for the block."""
    stream = watch.open(partial(end_call, context), idle)
    try:
        yield stream
    finally:
        watch.done(stream)


class UpdateServicer(pb_grpc.UpdateServiceServicer):
    """Agents upload as the agent their certificate names, never as another."""

    def __init__(
        self, service: AggregatorService, guard: Guard, slots: StreamSlots, rate: RateLimiter, watch: StreamWatch
    ) -> None:
        self.service = service
        self.guard = guard
        self.slots = slots
        self.rate = rate
        self.watch = watch

    def _limited(self, limit: str) -> None:
        LIMIT_HITS.labels(self.service.state.tenant, "aggregator", limit).inc()

    @translate_errors
    def UploadUpdate(
        self, request_iterator: Iterator[pb.UploadUpdateRequest], context: grpc.ServicerContext
    ) -> pb.UploadUpdateResponse:
        # With TLS the slot is the certificate's agent's, taken before any message is read.
        opener = self.guard.agent(context) if self.guard.tls else None
        with self.slots.hold(opener, self._limited), watched(self.watch, context, "sent nothing") as stream:
            first = self._next(request_iterator, stream)
            if first is None or first.WhichOneof("payload") != "header":
                raise InvalidArgument("the first message of an upload must be its header")
            agent_id = self.guard.agent(context, first.header.agent_id)
            # In plaintext (development) the slot is the agent the header names.
            with self.slots.hold(agent_id, self._limited, count=False) if opener is None else nullcontext():
                duplicate, received = self.service.receive_update(
                    _header(first.header, agent_id, self.service.ingest.parse_layout), self._chunks(agent_id, request_iterator, stream),
                    before_count=lambda: self.guard.agent(context, agent_id), on_close=stream.end,
                )
        return pb.UploadUpdateResponse(duplicate=duplicate, bytes_received=received)

    @translate_errors
    def UploadStatus(self, request: pb.UploadStatusRequest, context: grpc.ServicerContext) -> pb.UploadStatusResponse:
        agent_id = self.guard.agent(context, request.agent_id)
        counted, offset = self.service.upload_status(request.run_id, request.round, agent_id, request.upload_id)
        return pb.UploadStatusResponse(counted=counted, offset=offset)

    @staticmethod
    def _next(requests: Iterator[pb.UploadUpdateRequest], stream: WatchedStream) -> pb.UploadUpdateRequest | None:
        """The stream's next message, None at its end; raises the reason the server ended it,
        or StreamEnded when the client went away."""
        stream.touch()
        try:
            msg = next(requests, None)
        except grpc.RpcError:
            raise stream.ended or StreamEnded("the client cancelled the upload") from None
        stream.hold()  # what the server does with it (spool, verify, fold) is not the client's silence
        return msg

    def _chunks(
        self, agent_id: str, requests: Iterator[pb.UploadUpdateRequest], stream: WatchedStream
    ) -> Iterator[tuple[int, bytes, int]]:
        while (msg := self._next(requests, stream)) is not None:
            if msg.WhichOneof("payload") != "chunk":
                raise InvalidArgument("only chunks may follow an upload's header")
            wait = self.rate.delay(agent_id)
            if wait > 0:
                # Slowed, not refused: the stream's flow control holds the sender back.
                self._limited("chunks_per_s")
                time.sleep(wait)  # held: the wait is the server's, not the sender's
            yield msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c


def _header(h: pb.UpdateHeader, agent_id: str, parse_layout: Callable[[tensor_pb2.Layout], Layout]) -> UpdateHeader:
    return UpdateHeader(
        run_id=h.run_id,
        round=h.round,
        agent_id=agent_id,
        layout=parse_layout(h.layout),
        num_examples=h.num_examples,
        metrics=dict(h.metrics),
        upload_id=h.upload_id,
        resume_offset=h.resume_offset,
        provenance=Provenance.checked(h.agent_version, h.task_version, h.data_fingerprint),
    )


def end_call(context: grpc.ServicerContext, error: FedstreamError) -> None:
    """Ends a call from any thread with the error's status and public message; its handler,
    blocked reading the next message, wakes with grpc.RpcError."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    if call is None:  # not grpcio's server context: end it without a message
        context.cancel()
        return
    # grpcio's ServicerContext.cancel() takes no status; its call object does.
    call.cancel(cygrpc.StatusCode(error.grpc_code.value[0]), error.public)


def add_transfer_servicers(server: grpc.Server, models: ModelServicer, updates: UpdateServicer) -> None:
    """Registers download and upload with fedstream.wire's zero-copy chunk codec."""
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("fedstream.v1.ModelService", {
            "DownloadModel": grpc.unary_stream_rpc_method_handler(
                models.DownloadModel,
                request_deserializer=pb.DownloadModelRequest.FromString,
                response_serializer=wire.serialize,
            ),
        }),
        grpc.method_handlers_generic_handler("fedstream.v1.UpdateService", {
            "UploadUpdate": grpc.stream_unary_rpc_method_handler(
                updates.UploadUpdate,
                request_deserializer=wire.deserializer(pb.UploadUpdateRequest),
                response_serializer=pb.UploadUpdateResponse.SerializeToString,
            ),
            "UploadStatus": grpc.unary_unary_rpc_method_handler(
                updates.UploadStatus,
                request_deserializer=pb.UploadStatusRequest.FromString,
                response_serializer=pb.UploadStatusResponse.SerializeToString,
            ),
        }),
    ))


class ControlServicer(pb_grpc.AggregatorControlServicer):
    """Round control: the scheduler and a root aggregator only."""

    def __init__(self, service: AggregatorService, guard: Guard) -> None:
        self.service = service
        self.guard = guard

    @translate_errors
    def OpenRound(self, request: pb.RoundPlan, context: grpc.ServicerContext) -> pb.OpenRoundResponse:
        self.guard.require_role(context, "service")
        endpoints = self.service.open_round(convert.plan_from_proto(request))
        return pb.OpenRoundResponse(endpoints=endpoints)

    @translate_errors
    def WatchRound(
        self, request: pb.WatchRoundRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RoundEvent]:
        self.guard.require_role(context, "service")
        for snap in self.service.watch(request.run_id, request.round, context.is_active):
            yield from snapshot_to_events(snap)

    @translate_errors
    def CollectPartial(
        self, request: pb.CollectPartialRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CollectPartialResponse]:
        self.guard.require_role(context, "service")
        layout, total_weight, reports, chunks = self.service.collect_partial(request.run_id, request.round)
        # The first header carries the layout and weight; the reports are paged over as many as needed.
        pages = list(report_pages(reports))
        for i, page in enumerate(pages):
            header = pb.PartialHeader(reports=page, continued=i < len(pages) - 1)
            if i == 0:
                header.layout.CopyFrom(layout.to_proto())
                header.total_weight = total_weight
            yield pb.CollectPartialResponse(header=header)
        for chunk in chunks:
            yield pb.CollectPartialResponse(chunk=chunk.to_proto())

    @translate_errors
    def FinishPartial(
        self, request: pb.FinishPartialRequest, context: grpc.ServicerContext
    ) -> pb.FinishPartialResponse:
        self.guard.require_role(context, "service")
        self.service.finish_partial(request.run_id, request.round, request.version, request.reason)
        return pb.FinishPartialResponse()

    @translate_errors
    def AbortRound(self, request: pb.AbortRoundRequest, context: grpc.ServicerContext) -> pb.AbortRoundResponse:
        self.guard.require_role(context, "service")
        snap = self.service.abort_round(request.run_id, request.round, request.reason)
        return pb.AbortRoundResponse(state=convert.state_to_proto(snap.state), version=snap.version, reason=snap.reason)
