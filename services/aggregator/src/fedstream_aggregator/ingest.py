"""Uploads: an update is verified chunk by chunk (order, bounds, checksum) into a spool file,
checked finite, optionally kept in the model store, then counted in the journal (atomically,
once per agent) and folded into the round's accumulator under the round's lock. A bad upload
never touches the accumulator."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from fedstream.aggregation import to_accumulator
from fedstream.compression import SCALE_SUFFIX
from fedstream.dp import clip_factor, sum_of_squares
from fedstream.errors import (
    AgentNotSelected,
    FailedPrecondition,
    FedstreamError,
    InvalidArgument,
    InvalidLayout,
    NonFinite,
    ResourceExhausted,
    ResumeRefused,
    RoundCancelled,
    RoundClosed,
    RoundNotOpen,
    StreamEnded,
    UploadInProgress,
)
from fedstream.logs import log_context
from fedstream.metrics import LIMIT_HITS
from fedstream.privacy import DPMode
from fedstream.provenance import Provenance
from fedstream.rounds import RoundKind, UpdateReport
from fedstream.store import ModelStore
from fedstream.tensors import Layout
from fedstream.v1 import tensor_pb2
from fedstream_aggregator import metrics as m
from fedstream_aggregator.buffered import TAKE_OVER_S, Buffers
from fedstream_aggregator.commit import Committer
from fedstream_aggregator.hierarchy import Hierarchy
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.partials import Partial, PartialUploads, layout_digest, receive_into
from fedstream_aggregator.privacy import recorded
from fedstream_aggregator.rounds import Round, RoundTable, closing_reason
from fedstream_aggregator.secure import secure_weight
from fedstream_aggregator.spool import Spool, SpoolPool, copy_out

log = logging.getLogger(__name__)

# Bytes of an update read at a time when checking its values are finite.
FINITE_PIECE_BYTES = 1 << 20
# Largest update accepted by default in any round (its declared bytes); the server sets it from
# its limits. A round with a base model takes at most that model's size and a little more.
DEFAULT_MAX_UPDATE_BYTES = 256 << 30
# What a training round's update may declare beyond its base model's bytes, as a share of them
# and a fixed slack (its layout must match the model anyway: this refuses absurd headers first).
UPDATE_BYTES_OVER_MODEL = 1 / 8
UPDATE_BYTES_SLACK = 64 << 20
DEFAULT_MAX_METRICS = 64
DEFAULT_MAX_METRIC_NAME_BYTES = 4096
DEFAULT_MAX_TENSORS = 20_000
DEFAULT_MAX_TENSOR_NAME_LENGTH = 512

Chunks = Iterable[tuple[int, bytes, int]]


@dataclass(frozen=True)
class UpdateHeader:
    """What an upload declares before its chunks."""

    run_id: str
    round: int
    agent_id: str
    layout: Layout
    num_examples: int
    metrics: dict[str, float]
    # A resumable upload's id (see PartialUploads), and where this stream's chunks start.
    upload_id: str = ""
    resume_offset: int = 0
    # What the agent reported of itself (checked where the header is parsed).
    provenance: Provenance = field(default_factory=Provenance)


def check_finite(layout: Layout, read_into: Callable[[int, memoryview], None], *, measure: bool = False) -> float:
    """Raises NonFinite naming the first floating tensor of the update that holds a NaN or an
    infinity (scales of compressed updates included): such an update would poison the round's
    mean, so it is refused before it counts. Reads the spooled update piece by piece. Returns
    the L2 norm of its floating tensors when ``measure`` (in the same pass), else 0."""
    piece = bytearray(FINITE_PIECE_BYTES)
    squares = 0.0
    for t in layout.tensors:
        if not t.dt.is_float or t.nbytes == 0:
            continue
        item = t.dt.itemsize
        step = FINITE_PIECE_BYTES - FINITE_PIECE_BYTES % item
        for start in range(0, t.nbytes, step):
            n = min(step, t.nbytes - start)
            view = memoryview(piece)[:n]
            read_into(t.offset + start, view)
            values = to_accumulator(t.dt, np.frombuffer(view, dtype=t.dt.storage))
            if not np.isfinite(values).all():
                bad = int(np.flatnonzero(~np.isfinite(values))[0]) + start // item
                raise NonFinite(f"tensor {t.name!r} holds NaN or infinite values (first at element {bad})")
            if measure:
                squares += sum_of_squares(values)
    _check_int8_scales(layout, read_into)
    return math.sqrt(squares)


# The largest int8 scale whose every value (at most 127 times the scale) is a finite float32.
MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 127


def _check_int8_scales(layout: Layout, read_into: Callable[[int, memoryview], None]) -> None:
    """Raises NonFinite naming the scale of an int8 tensor whose values would decode past
    float32's range."""
    names = set(layout.names)
    for t in layout.tensors:
        if t.dtype != "int8" or t.name + SCALE_SUFFIX not in names:
            continue
        spec = layout.spec(t.name + SCALE_SUFFIX)
        raw = memoryview(bytearray(spec.nbytes))
        read_into(spec.offset, raw)
        scale = np.abs(to_accumulator(spec.dt, np.frombuffer(raw, dtype=spec.dt.storage)).astype(np.float64))
        if scale.size and scale.max() > MAX_INT8_SCALE:
            raise NonFinite(
                f"tensor {spec.name!r}: scale {scale.max():g} decodes int8 values past float32's range "
                f"(at most {MAX_INT8_SCALE:g})"
            )


def check_report_metrics(metrics: dict[str, float], max_metrics: int, max_name_bytes: int, tenant: str) -> None:
    """Raises InvalidArgument when a report carries more metrics, or more bytes of metric
    names, than this aggregator's limits."""
    if len(metrics) > max_metrics:
        LIMIT_HITS.labels(tenant, "aggregator", "max_metrics_per_report").inc()
        raise InvalidArgument(
            f"the report carries {len(metrics)} metrics; this aggregator takes at most "
            f"{max_metrics} (max_metrics_per_report)"
        )
    name_bytes = sum(len(k.encode()) for k in metrics)
    if name_bytes > max_name_bytes:
        LIMIT_HITS.labels(tenant, "aggregator", "max_metric_name_bytes").inc()
        raise InvalidArgument(
            f"the report's metric names take {name_bytes} bytes; this aggregator takes at most "
            f"{max_name_bytes} (max_metric_name_bytes)"
        )


class Ingest:
    """Receives the updates of the rounds in ``table`` (those of buffered asynchronous runs
    through ``buffers``)."""

    check_finite = staticmethod(check_finite)

    def __init__(
        self, table: RoundTable, journal: Journal, store: ModelStore, spools: SpoolPool,
        hierarchy: Hierarchy, committer: Committer, partials: PartialUploads, *, tenant: str, chunk_bytes: int,
    ) -> None:
        self.table = table
        self.partials = partials
        self.journal = journal
        self.store = store
        self.spools = spools
        self.hierarchy = hierarchy
        self.committer = committer
        self.tenant = tenant
        self.chunk_bytes = chunk_bytes
        self.max_update_bytes = DEFAULT_MAX_UPDATE_BYTES
        # Metrics per report and bytes of their names; the server sets them from its limits.
        self.max_metrics = DEFAULT_MAX_METRICS
        self.max_metric_name_bytes = DEFAULT_MAX_METRIC_NAME_BYTES
        # Tensors per layout and characters per tensor name; the server sets them from its limits.
        self.max_tensors = DEFAULT_MAX_TENSORS
        self.max_tensor_name_length = DEFAULT_MAX_TENSOR_NAME_LENGTH
        self.buffers = Buffers(self)

    def receive(
        self, header: UpdateHeader, chunks: Chunks, before_count: Callable[[], object] = lambda: None,
        on_close: Callable[[FedstreamError], None] = lambda error: None,
    ) -> tuple[bool, int]:
        """``_receive``, measured: chunks and bytes received, updates counted or refused."""
        tenant = self.tenant

        def counting() -> Iterator[tuple[int, bytes, int]]:
            for item in chunks:
                m.CHUNKS_RECEIVED.labels(tenant).inc()
                m.BYTES_RECEIVED.labels(tenant).inc(len(item[1]))
                yield item

        try:
            duplicate, received = self._receive(header, counting(), before_count, on_close)
        except RoundCancelled:
            raise  # not a bad update: its round was abandoned, and it counts nowhere
        except RoundClosed:
            m.LATE_UPDATES.labels(tenant).inc()  # not a bad update: its round had what it needed
            raise
        except FedstreamError as e:
            m.UPDATES_REJECTED.labels(tenant, e.code).inc()
            raise
        if not duplicate:
            rnd = self.table.find(header.run_id, header.round)
            kind = rnd.plan.kind if rnd is not None else RoundKind.TRAIN
            m.UPDATES_FOLDED.labels(tenant, kind.value).inc()
        return duplicate, received

    def _receive(
        self, header: UpdateHeader, chunks: Chunks, before_count: Callable[[], object],
        on_close: Callable[[FedstreamError], None],
    ) -> tuple[bool, int]:
        """Verifies, spools and folds one agent's update; returns (duplicate, bytes received).

        Raises RoundNotFound, AgentNotSelected, RoundNotOpen, InvalidLayout, InvalidArgument,
        BadOffset, ChecksumMismatch, Truncated or UploadInProgress. Whatever it raises, the
        accumulator is unchanged. ``on_close`` is registered with the round while the update
        streams, so that a round that stops taking updates ends it.
        """
        buffered = self.buffers.assigned_plan(header.run_id, header.round)
        if buffered is not None:
            return self.buffers.receive(buffered, header, chunks, before_count, on_close)
        rnd = self.table.get(header.run_id, header.round)
        self._check_sender(rnd, header)
        with rnd.lock:
            if header.agent_id in rnd.reports:
                return True, 0
        rnd.check_accepting(self.table.clock())
        weight = self._check_content(rnd, header)
        agent = header.agent_id
        self._claim(rnd, header, on_close)
        try:
            return self._spool_and_count(rnd, header, chunks, weight, before_count)
        finally:
            with rnd.lock:
                rnd.uploading.discard(agent)
                rnd.closers.pop(agent, None)

    def _claim(self, rnd: Round, header: UpdateHeader, on_close: Callable[[FedstreamError], None]) -> None:
        """Marks the agent's upload as streaming. A resumed upload of the same update takes over
        a stream of it that the server still holds (its client is gone: cut without a word);
        raises UploadInProgress for any other upload streaming from the agent for the round."""
        agent, ended = header.agent_id, False
        key = (header.run_id, header.round, agent)
        deadline = time.monotonic() + TAKE_OVER_S
        while True:
            with rnd.lock:
                rnd.check_accepting(self.table.clock())
                if agent not in rnd.uploading:
                    rnd.uploading.add(agent)
                    rnd.closers[agent] = on_close
                    return
                same = bool(header.upload_id) and self.partials.streaming_id(key) == header.upload_id
                stale = rnd.closers.get(agent) if same else None
            if stale is None or time.monotonic() > deadline:
                raise UploadInProgress(f"an upload from agent {agent!r} for this round is already in progress")
            if not ended:
                stale(StreamEnded("a resumed upload of the same update took this stream's place"))
                ended = True
            time.sleep(0.02)

    def status(self, run_id: str, round_: int, agent: str, upload_id: str) -> tuple[bool, int]:
        """(the agent's update for the round counted already, the offset ``upload_id`` resumes
        from). Raises RoundNotFound, AgentNotSelected, FailedPrecondition (the agent uploads to a
        leaf), RoundNotOpen or RoundCancelled (the round no longer takes updates)."""
        buffered = self.buffers.assigned_plan(run_id, round_)
        if buffered is not None:
            return self.buffers.status(buffered, agent, upload_id)
        rnd = self.table.get(run_id, round_)
        if agent not in rnd.plan.participants:
            raise AgentNotSelected(f"agent {agent!r} was not selected for round {round_} of run {run_id!r}")
        with rnd.lock:
            if agent in rnd.reports:
                return True, 0
        rnd.check_accepting(self.table.clock())
        leaf = self.hierarchy.leaf_of(rnd, agent)
        if leaf:
            raise FailedPrecondition(f"agent {agent!r} uploads round {round_} of run {run_id!r} to the leaf aggregator at {leaf}")
        return False, self.partials.offset((run_id, round_, agent), upload_id) if upload_id else 0

    def _check_sender(self, rnd: Round, header: UpdateHeader) -> None:
        """Raises unless the agent takes part in the round here, with an update not too large."""
        plan, agent = rnd.plan, header.agent_id
        if agent not in plan.participants:
            raise AgentNotSelected(f"agent {agent!r} was not selected for round {plan.round} of run {plan.run_id!r}")
        most, why = self.update_limit(rnd)
        if header.layout.total_bytes > most:
            LIMIT_HITS.labels(self.tenant, "aggregator", "max_update_bytes").inc()
            raise ResourceExhausted(
                f"the update declares {header.layout.total_bytes} bytes; this aggregator takes at most {most} {why}"
            )
        self._check_metrics(header.metrics)
        leaf = self.hierarchy.leaf_of(rnd, agent)
        if leaf:
            raise FailedPrecondition(
                f"agent {agent!r} uploads round {plan.round} of run {plan.run_id!r} to the leaf aggregator at {leaf}"
            )

    def update_limit(self, rnd: Round) -> tuple[int, str]:
        """The most bytes an update of ``rnd`` may declare, and why: the round's base model's
        size plus UPDATE_BYTES_OVER_MODEL of it plus UPDATE_BYTES_SLACK, within max_update_bytes."""
        if rnd.layout is None:
            return self.max_update_bytes, "(max_update_bytes)"
        model = rnd.layout.total_bytes
        follows = model + int(model * UPDATE_BYTES_OVER_MODEL) + UPDATE_BYTES_SLACK
        if follows < self.max_update_bytes:
            return follows, f"in this round (its model's {model} bytes, an eighth more and 64 MiB)"
        return self.max_update_bytes, "(max_update_bytes)"

    def parse_layout(self, msg: tensor_pb2.Layout) -> Layout:
        """An upload header's layout, parsed once its number of tensors and the length of its
        names are within this aggregator's limits (InvalidArgument naming the limit and value,
        counted); raises InvalidLayout for a malformed one."""
        limits = (("max_tensors", len(msg.tensors), self.max_tensors, "tensors"),
                  ("max_tensor_name_length", max((len(t.name) for t in msg.tensors), default=0),
                   self.max_tensor_name_length, "characters in its longest tensor name"))
        for limit, value, most, what in limits:
            if value > most:
                LIMIT_HITS.labels(self.tenant, "aggregator", limit).inc()
                raise InvalidArgument(f"the layout has {value} {what}; this aggregator takes at most {most} ({limit})")
        return Layout.from_proto(msg)

    def _check_metrics(self, metrics: dict[str, float]) -> None:
        check_report_metrics(metrics, self.max_metrics, self.max_metric_name_bytes, self.tenant)

    def _check_content(self, rnd: Round, header: UpdateHeader) -> float:
        """Checks what the header declares against the round; returns the update's weight."""
        plan = rnd.plan
        if not all(np.isfinite(v) for v in header.metrics.values()):
            raise InvalidArgument("metrics must be finite numbers")
        if plan.kind is RoundKind.TRAIN:
            assert rnd.wire is not None
            if rnd.secure is not None:
                rnd.secure.check_upload(header.agent_id)  # it shared keys: its masks can be removed
            problem = header.layout.mismatch(rnd.wire)
            if problem:
                how = "" if plan.compression == "none" else f" sent as {plan.compression}"
                raise InvalidLayout(f"update does not match model {plan.base_version}{how}: {problem}")
            if rnd.secure is not None:  # weighed by the agent before masking: its examples, or 1 under privacy
                return float(secure_weight(plan, header.num_examples))
            if plan.privacy is not None:
                return 1.0  # every update weighs the same (central mode: its clip factor, once measured)
            return rnd.strategy.weight(header.num_examples, header.metrics)
        if plan.kind is RoundKind.EVALUATE:
            if header.layout.tensors:
                raise InvalidLayout("an evaluation round takes a report only: its layout must be empty")
            if header.num_examples == 0:
                raise InvalidArgument("an evaluation report needs the number of examples evaluated")
        return 0.0

    def _spool_and_count(
        self, rnd: Round, header: UpdateHeader, chunks: Chunks, weight: float, before_count: Callable[[], object]
    ) -> tuple[bool, int]:
        partial = self._open_partial(header)
        spool: Spool | None = partial.spool if partial is not None else None
        keep_spool = done = whole = False
        try:
            if spool is None:
                spool = self.spools.acquire(header.layout.total_bytes)
            receiver = receive_into(header.layout, header.resume_offset, chunks, spool, partial)
            whole = True
            duplicate, keep_spool = self._verified(rnd, header, spool, receiver.received, weight, before_count)
            done = True
            return duplicate, receiver.received
        finally:
            self._release(partial, spool, done=done, whole=whole, keep_spool=keep_spool)

    def _open_partial(self, header: UpdateHeader) -> Partial | None:
        """The partial upload a resumable upload spools into; None for one that is not."""
        if not header.upload_id or not self.partials.enabled:
            if header.resume_offset:
                raise ResumeRefused("this aggregator keeps no partial uploads to resume (partial_upload_max_bytes is 0)")
            return None
        key = (header.run_id, header.round, header.agent_id)
        return self.partials.open(key, header.upload_id, layout_digest(header.layout), header.layout.total_bytes,
                                  header.resume_offset)

    def _release(self, partial: Partial | None, spool: Spool | None, *, done: bool, whole: bool, keep_spool: bool) -> None:
        """What an upload held, once it ends: a counted (or duplicate) one's spool goes back to
        the pool (unless the round holds it); a cut resumable one is kept for its resume; any
        other gives its space back."""
        if partial is not None:
            if done:
                spool = self.partials.done(partial, self.spools.directory)
            elif whole:  # refused once whole: resuming it would be refused again
                self.partials.drop(partial)
                return
            else:
                self.partials.suspend(partial)
                return
        if spool is None or keep_spool:
            return
        if done:
            self.spools.release(spool)
        else:
            spool.close()

    def _verified(
        self, rnd: Round, header: UpdateHeader, spool: Spool, received: int, weight: float,
        before_count: Callable[[], object],
    ) -> tuple[bool, bool]:
        """A whole, sound update: checked finite, kept if the round keeps updates, counted and
        folded; returns (duplicate, the round holds the spool now)."""
        plan, agent = rnd.plan, header.agent_id
        started = time.perf_counter()
        with rnd.lock:  # received whole: closing the round no longer ends this stream
            rnd.closers.pop(agent, None)
        if plan.kind.uploads_model:
            clipping = plan.kind is RoundKind.TRAIN and plan.privacy is not None and plan.privacy.mode is DPMode.CENTRAL
            norm = check_finite(header.layout, spool.read_into, measure=clipping)
            if clipping:
                weight = self._clip_weight(rnd, norm)
        before_count()  # the agent may have been revoked while it uploaded
        if rnd.keeps_updates:
            rnd.check_accepting(self.table.clock())
            self._keep_update(rnd, agent, header.layout, spool)
        examples, metrics = recorded(plan, header.num_examples, dict(header.metrics))
        report = header.provenance.report(agent, examples, metrics, received, weight)
        try:
            counted, keep_spool, complete = self._count(rnd, report, header.layout, spool)
        except RoundNotOpen:
            self._forget_kept(rnd)
            raise
        if not counted:
            return True, False
        if report.weight < 1.0 and plan.privacy is not None and plan.privacy.mode is DPMode.CENTRAL:
            m.DP_UPDATES_CLIPPED.labels(self.tenant).inc()  # a count only: norms would leak
        with log_context(run_id=plan.run_id, round=plan.round, agent_id=agent):
            log.info("update folded: %d examples, %d bytes (%s) in %.2f s", report.num_examples, received,
                     f"resumed at {header.resume_offset}" if header.resume_offset else "whole",
                     time.perf_counter() - started)
        rnd.notify()
        if complete:
            self.committer.close(rnd, closing_reason(plan, len(rnd.reports)))
        return False, keep_spool

    def _clip_weight(self, rnd: Round, norm: float) -> float:
        """Central differential privacy: the update's weight is its clip factor min(1, C / norm)
        (the accumulator's mean times the sum of weights over n is then the mean of the clipped
        changes). The norm itself is not reported anywhere (it would leak). Raises InvalidArgument when the factor is too small to represent."""
        assert rnd.plan.privacy is not None
        factor = clip_factor(norm, rnd.plan.privacy.clip_norm)
        if not factor > 0:
            raise InvalidArgument("the update's change is too large to clip to privacy.clip_norm")
        return factor

    def _count(self, rnd: Round, report: UpdateReport, layout: Layout, spool: Spool) -> tuple[bool, bool, bool]:
        """Counts a verified update in the journal and folds it; returns (counted, the round
        holds the spool now, every participant reported)."""
        plan = rnd.plan
        with rnd.lock:
            rnd.check_accepting(self.table.clock())
            if report.agent_id in rnd.reports or not self.journal.count(plan, report):
                return False, False, False
            rnd.reports[report.agent_id] = report
            held = False
            if plan.kind is RoundKind.TRAIN and rnd.secure is not None:
                rnd.secure.fold(spool.read_into, report.agent_id, int(report.weight))
            elif plan.kind is RoundKind.TRAIN and rnd.accumulator is not None:
                rnd.accumulator.fold(spool.read_into, report.weight, rnd.wire)
            elif plan.kind is RoundKind.INIT:  # its one upload becomes the version as it is
                rnd.layout = layout
                rnd.init_spool = spool
                held = True
            complete = len(rnd.reports) >= plan.closes_at and not plan.partial
            complete = complete or (rnd.secure is not None and rnd.secure.all_uploaded())
            return True, held, complete

    def _forget_kept(self, rnd: Round) -> None:
        """Deletes the kept updates of a round that ended while one was being kept: the round
        deleted those it knew of when it ended."""
        if rnd.keeps_updates and rnd.terminal():
            try:
                self.store.delete_updates(rnd.plan.run_id, rnd.plan.round)
            except FedstreamError as e:
                log.warning("cannot delete the kept updates of round %d: %s", rnd.plan.round, e.public)

    def _keep_update(self, rnd: Round, agent: str, layout: Layout, spool: Spool) -> None:
        """Copies a verified update from its spool file into the model store."""
        plan = rnd.plan
        with self.store.update_writer(plan.run_id, plan.round, agent, layout) as writer:
            copy_out(spool.read_into, layout.total_bytes, self.chunk_bytes, writer.write)
            writer.commit(set_latest=False)
