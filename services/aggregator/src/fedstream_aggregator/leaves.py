"""A root aggregator's gRPC clients of its leaves (hierarchical aggregation).

The root opens each leaf's share of a round, follows the leaf's progress, collects the leaf's
weighted sums when the round closes and tells the leaf when the round is finished. Errors come
back as the catalog's: Unavailable when the leaf cannot be reached (worth retrying),
RoundNotFound or FailedPrecondition when it refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from fedstream import convert
from fedstream.errors import DataLoss, FailedPrecondition, FedstreamError, RoundNotFound, Unavailable
from fedstream.events import joined
from fedstream.grpcutil import channel
from fedstream.pki import TlsIdentity
from fedstream.rounds import RoundPlan, RoundSnapshot, UpdateReport
from fedstream.tensors import Layout
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc

# Seconds a unary call to a leaf may take.
CALL_TIMEOUT_S = 10.0


def _error(endpoint: str, e: grpc.RpcError) -> FedstreamError:
    code, details = e.code(), e.details()
    message = f"leaf aggregator {endpoint}: {details or code.name}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Unavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return RoundNotFound(message)
    return FailedPrecondition(message)


class Leaf:
    """One leaf aggregator: ``endpoint`` is where the root reaches it, ``public_endpoint``
    where agents do (the same when empty)."""

    def __init__(self, endpoint: str, public_endpoint: str = "", identity: TlsIdentity | None = None) -> None:
        self.endpoint = endpoint
        self.public_endpoint = public_endpoint or endpoint
        self._channel = channel(endpoint, identity)
        self._stub = pb_grpc.AggregatorControlStub(self._channel)

    def _closed(self) -> Unavailable:
        return Unavailable(f"leaf aggregator {self.endpoint}: the root is shutting down")

    def open_round(self, plan: RoundPlan) -> None:
        try:
            self._stub.OpenRound(convert.plan_to_proto(plan), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            raise _error(self.endpoint, e) from None
        except ValueError:  # the channel was closed
            raise self._closed() from None

    def watch(
        self, run_id: str, round_: int
    ) -> tuple[Iterator[RoundSnapshot], Callable[[], None]]:
        """The leaf round after every change, and a function that ends the stream from another
        thread."""
        try:
            call = self._stub.WatchRound(pb.WatchRoundRequest(run_id=run_id, round=round_))
        except ValueError:
            raise self._closed() from None

        def events() -> Iterator[RoundSnapshot]:
            try:
                yield from joined(call)
            except grpc.RpcError as e:
                raise _error(self.endpoint, e) from None

        return events(), call.cancel

    def collect(
        self, run_id: str, round_: int, timeout_s: float
    ) -> tuple[Layout, float, list[UpdateReport], Iterator[tuple[int, bytes, int]]]:
        """The leaf's sums layout, total weight, reports, and its sums as (offset, data, crc)."""
        try:
            call = self._stub.CollectPartial(pb.CollectPartialRequest(run_id=run_id, round=round_), timeout=timeout_s)
            first = next(call, None)
        except grpc.RpcError as e:
            raise _error(self.endpoint, e) from None
        except ValueError:
            raise self._closed() from None
        if first is None or first.WhichOneof("payload") != "header":
            call.cancel()
            raise DataLoss(f"leaf aggregator {self.endpoint} sent partial sums without a header")
        header = first.header
        reports = [convert.report_from_proto(r) for r in header.reports]
        more = header.continued
        try:
            while more:  # the reports, paged over headers
                msg = next(call, None)
                if msg is None or msg.WhichOneof("payload") != "header":
                    call.cancel()
                    raise DataLoss(f"leaf aggregator {self.endpoint} ended its paged reports early")
                reports.extend(convert.report_from_proto(r) for r in msg.header.reports)
                more = msg.header.continued
        except grpc.RpcError as e:
            raise _error(self.endpoint, e) from None

        def chunks() -> Iterator[tuple[int, bytes, int]]:
            try:
                for msg in call:
                    if msg.WhichOneof("payload") != "chunk":
                        raise DataLoss(f"leaf aggregator {self.endpoint} sent a second header")
                    yield msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c
            except grpc.RpcError as e:
                raise _error(self.endpoint, e) from None
            finally:
                call.cancel()

        return Layout.from_proto(header.layout), header.total_weight, reports, chunks()

    def finish(self, run_id: str, round_: int, version: str, reason: str) -> None:
        request = pb.FinishPartialRequest(run_id=run_id, round=round_, version=version, reason=reason)
        try:
            self._stub.FinishPartial(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            raise _error(self.endpoint, e) from None
        except ValueError:
            raise self._closed() from None

    def close(self) -> None:
        self._channel.close()
