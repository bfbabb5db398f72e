"""Round events paged to fit gRPC messages: a snapshot of a round carries every report, and
however many agents report, no event between the services passes EVENT_PAGE_BYTES plus one
report, far below gRPC's 4 MiB.

The bound holds by construction: a report's metrics are limited (MAX_REPORT_METRICS of at
most MAX_REPORT_NAME_BYTES of names, aggregator settings), so one report, agent id included,
takes under 1.3 MiB, and a page is closed before it would pass EVENT_PAGE_BYTES."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from fedstream.convert import report_to_proto, snapshot_from_proto, state_to_proto
from fedstream.errors import InvalidArgument
from fedstream.rounds import RoundSnapshot, UpdateReport
from fedstream.v1 import aggregator_pb2, round_pb2

# The most metrics, and bytes of metric names, any report may carry (the settings' ceilings).
MAX_REPORT_METRICS = 10_000
MAX_REPORT_NAME_BYTES = 1 << 20
# Bytes of reports, stragglers and metrics above which an event's page is closed.
EVENT_PAGE_BYTES = 1 << 20
# A field's tag and length prefix, at most, beside its payload.
_FIELD_OVERHEAD = 16


def snapshot_to_events(s: RoundSnapshot, page_bytes: int = EVENT_PAGE_BYTES) -> Iterator[aggregator_pb2.RoundEvent]:
    """The snapshot as one event, or as several when its reports, stragglers and metrics
    pass ``page_bytes``: every event but the last is ``continued``."""

    def fresh() -> aggregator_pb2.RoundEvent:
        return aggregator_pb2.RoundEvent(run_id=s.run_id, round=s.round, state=state_to_proto(s.state),
                                         version=s.version, reason=s.reason)

    event, size = fresh(), 0

    def room(n: int) -> bool:
        return size == 0 or size + n + _FIELD_OVERHEAD <= page_bytes

    for r in s.reports:
        msg = report_to_proto(r)
        n = msg.ByteSize()
        if not room(n):
            event.continued = True
            yield event
            event, size = fresh(), 0
        event.reports.append(msg)
        size += n + _FIELD_OVERHEAD
    for agent in s.stragglers:
        if not room(len(agent)):
            event.continued = True
            yield event
            event, size = fresh(), 0
        event.stragglers.append(agent)
        size += len(agent) + _FIELD_OVERHEAD
    for name, value in s.metrics.items():
        if not room(len(name) + 9):
            event.continued = True
            yield event
            event, size = fresh(), 0
        event.metrics[name] = value
        size += len(name) + 9 + _FIELD_OVERHEAD
    yield event


def report_pages(reports: Iterable[UpdateReport], page_bytes: int = EVENT_PAGE_BYTES) -> Iterator[list[round_pb2.UpdateReport]]:
    """The reports on the wire, in pages of under ``page_bytes`` each (a page holds one report
    at least); one page, empty, when there are none. A leaf's partial sums send one header per
    page, so the reports need not fit in one gRPC message."""
    page: list[round_pb2.UpdateReport] = []
    size = 0
    for r in reports:
        msg = report_to_proto(r)
        n = msg.ByteSize() + _FIELD_OVERHEAD
        if page and size + n > page_bytes:
            yield page
            page, size = [], 0
        page.append(msg)
        size += n
    yield page


def _join(pending: aggregator_pb2.RoundEvent | None, event: aggregator_pb2.RoundEvent) -> aggregator_pb2.RoundEvent:
    if pending is None:
        return event
    pending.MergeFrom(event)
    return pending


def joined(events: Iterable[aggregator_pb2.RoundEvent]) -> Iterator[RoundSnapshot]:
    """Joins paged events back into snapshots; raises InvalidArgument for a state the
    vocabulary does not know."""
    pending: aggregator_pb2.RoundEvent | None = None
    for event in events:
        pending = _join(pending, event)
        if not event.continued:
            whole, pending = pending, None
            yield snapshot_from_proto(whole)


async def joined_snapshots(events: AsyncIterable[aggregator_pb2.RoundEvent]) -> AsyncIterator[RoundSnapshot]:
    """Joins paged events back into snapshots. Snapshots in a state the vocabulary does not
    know are skipped."""
    pending: aggregator_pb2.RoundEvent | None = None
    async for event in events:
        pending = _join(pending, event)
        if event.continued:
            continue
        whole, pending = pending, None
        try:
            yield snapshot_from_proto(whole)
        except InvalidArgument:
            continue
