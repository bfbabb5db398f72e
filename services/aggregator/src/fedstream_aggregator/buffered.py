"""Buffered asynchronous rounds (FedBuff): each round of such a run is one buffer. An update names
the round it was assigned in; it counts in the run's buffer open when it arrives, weighed by its
example count and the staleness function of (open buffer - assigned round), and is refused
beyond the run's max_staleness. An update is (run, agent, assigned round): counted once over
all the run's buffers. Updates are changes from their base version (folded like any update; the
linear finisher adds the mean change to the buffer's base version)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedstream.errors import (
    AgentNotSelected,
    FedstreamError,
    InvalidArgument,
    InvalidLayout,
    ResourceExhausted,
    RoundCancelled,
    RoundNotFound,
    RoundNotOpen,
    StaleUpdate,
    StreamEnded,
    UploadInProgress,
)
from fedstream.logs import log_context
from fedstream.metrics import LIMIT_HITS
from fedstream.rounds import TERMINAL_RUN_STATES, RoundKind, RoundPlan, RoundState, UpdateReport
from fedstream.strategies import LinearStrategy, Strategy
from fedstream_aggregator import metrics as m
from fedstream_aggregator.partials import receive_into
from fedstream_aggregator.rounds import Round
from fedstream_aggregator.spool import Spool

if TYPE_CHECKING:
    from fedstream_aggregator.ingest import Chunks, Ingest, UpdateHeader

log = logging.getLogger(__name__)

# How long a whole update waits for its run's next buffer while the last one commits.
BUFFER_WAIT_S = 30.0
_POLL_S = 0.05
# Every this many polls, a waiting update asks whether its run has ended.
_RUN_CHECK_POLLS = 20
# How long a resumed upload waits for the stale stream of the same update to end.
TAKE_OVER_S = 5.0

Closer = Callable[[FedstreamError], None]


def update_key(agent_id: str, assigned: int) -> str:
    """The journal key of an agent's update assigned in round ``assigned``."""
    return f"{agent_id}#{assigned}"


def check_buffer_plan(plan: RoundPlan, strategy: Strategy) -> None:
    """Raises InvalidArgument unless a buffer's plan is one buffered aggregation can take."""
    if plan.buffer is None:
        return
    plan.buffer.check()
    if plan.kind is not RoundKind.TRAIN:
        raise InvalidArgument("only training rounds can be buffers of an asynchronous run")
    if not isinstance(strategy, LinearStrategy):
        raise InvalidArgument(f"strategy {strategy.name!r} combines every update at once: it cannot buffer updates")
    if plan.compression != "none" or plan.partial or plan.distill:
        raise InvalidArgument("a buffer takes uncompressed changes, whole on one aggregator, without distillation")


class Buffers:
    """Routes the uploads of buffered rounds to their run's open buffer and counts them once."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.table = ingest.table
        self.journal = ingest.journal
        self._lock = threading.Lock()
        # (run, update key) streaming now -> ends that stream (None once it is whole).
        self._streaming: dict[tuple[str, str], Closer | None] = {}

    def assigned_plan(self, run_id: str, round_: int) -> RoundPlan | None:
        """The plan of a buffered round, from the table or the journal (a buffer committed
        before a restart); None when the round is not a buffer. Raises RoundNotFound for a
        round of an asynchronous run past its newest buffer."""
        if not self.table.ready:
            return None  # the table answers Unavailable
        rnd = self.table.find(run_id, round_)
        if rnd is not None:
            return rnd.plan if rnd.plan.buffer is not None else None
        latest = self.table.latest(run_id)
        if latest is not None and latest.plan.buffer is not None and round_ > latest.plan.round:
            raise RoundNotFound(f"round {round_} of run {run_id!r} has not opened: its newest buffer is "
                                f"{latest.plan.round}")
        try:
            plan = self.journal.get(run_id, round_).plan
        except FedstreamError:
            return None
        return plan if plan.buffer is not None else None

    def open_buffer(self, run_id: str, wait_s: float) -> Round:
        """The run's buffer taking updates now, waited for up to ``wait_s`` while the last one
        commits. Raises RoundCancelled, or RoundNotOpen when none opens in time."""
        give_up = time.monotonic() + wait_s
        polls = 0
        while True:
            rnd = self.table.latest(run_id)
            if rnd is not None and rnd.plan.buffer is not None:
                if rnd.state is RoundState.CANCELLED:
                    rnd.check_accepting(self.table.clock())
                if self._takes(rnd):
                    return rnd
            if polls % _RUN_CHECK_POLLS == 0:
                self._check_run_goes_on(run_id)
            if time.monotonic() >= give_up:
                raise RoundNotOpen(f"no buffer of run {run_id!r} is taking updates; upload again later")
            polls += 1
            time.sleep(_POLL_S)

    def _takes(self, rnd: Round) -> bool:
        """Whether the buffer takes updates now: training, before its deadline, not full (the
        caller holds its lock, or checks again under it)."""
        assert rnd.plan.buffer is not None
        return (rnd.state is RoundState.TRAINING and self.table.clock() <= rnd.plan.deadline_unix
                and len(rnd.reports) < rnd.plan.buffer.buffer_size)

    def _check_run_goes_on(self, run_id: str) -> None:
        """Raises RoundNotOpen when the state store says the run has ended (no buffer will open
        again); says nothing when the store does not know the run."""
        try:
            run = self.journal.state.get_run(run_id)
        except FedstreamError:
            return
        if run.state in TERMINAL_RUN_STATES:
            raise RoundNotOpen(f"run {run_id!r} has {run.state}: it takes no more updates")

    def counted(self, run_id: str, key: str, assigned: int, upto: int) -> bool:
        """Whether the update ``key`` counted in one of the run's buffers ``assigned``..``upto``
        (the caller holds buffer ``upto``'s lock when it is the open one)."""
        for b in range(assigned, upto + 1):
            rnd = self.table.find(run_id, b)
            if rnd is not None:
                if key in rnd.reports:
                    return True
                continue
            try:
                if key in self.journal.get(run_id, b).reports:
                    return True
            except RoundNotFound:
                continue
        return False

    @staticmethod
    def staleness(target: Round, assigned: int) -> int:
        """Buffers opened since the update's; raises StaleUpdate beyond the run's maximum."""
        buffer = target.plan.buffer
        assert buffer is not None
        s = target.plan.round - assigned
        if s < 0:
            raise InvalidArgument(f"round {assigned} of run {target.plan.run_id!r} has not opened yet")
        if s > buffer.max_staleness:
            raise StaleUpdate(
                f"the update's base is {s} versions behind buffer {target.plan.round} of run "
                f"{target.plan.run_id!r}; this run takes at most {buffer.max_staleness} (max_staleness)"
            )
        return s

    def status(self, plan: RoundPlan, agent: str, upload_id: str) -> tuple[bool, int]:
        """UploadStatus for an update assigned in buffer ``plan``: counted already, or where
        ``upload_id`` resumes. Raises AgentNotSelected, StaleUpdate, RoundCancelled."""
        self._check_participant(plan, agent)
        key = update_key(agent, plan.round)
        latest = self.table.latest(plan.run_id)
        upto = latest.plan.round if latest is not None else plan.round
        if self.counted(plan.run_id, key, plan.round, upto):
            return True, 0
        if latest is not None:
            if latest.state is RoundState.CANCELLED:
                latest.check_accepting(self.table.clock())
            self.staleness(latest, plan.round)
        partials = self.ingest.partials
        return False, partials.offset((plan.run_id, plan.round, agent), upload_id) if upload_id else 0

    @staticmethod
    def _check_participant(plan: RoundPlan, agent: str) -> None:
        if agent not in plan.participants:
            raise AgentNotSelected(f"agent {agent!r} was not assigned in round {plan.round} of run {plan.run_id!r}")

    def receive(
        self, plan: RoundPlan, header: UpdateHeader, chunks: Chunks, before_count: Callable[[], object],
        on_close: Closer = lambda error: None,
    ) -> tuple[bool, int]:
        """Verifies, spools and counts one update assigned in buffer ``plan`` into the run's open
        buffer; returns (duplicate, bytes received). Whatever it raises, nothing counted.
        ``on_close`` ends this stream when a resumed upload of the same update takes its place."""
        self._check_participant(plan, header.agent_id)
        key = update_key(header.agent_id, plan.round)
        target = self.open_buffer(plan.run_id, BUFFER_WAIT_S)
        if self.counted(plan.run_id, key, plan.round, target.plan.round):
            return True, 0
        self._check_header(target, header, plan.round)
        flight = (plan.run_id, key)
        self._claim(flight, header, on_close)
        try:
            return self._spool_and_count(plan, header, key, chunks, before_count)
        finally:
            with self._lock:
                if self._streaming.get(flight, on_close) in (on_close, None):
                    self._streaming.pop(flight, None)

    def _claim(self, flight: tuple[str, str], header: UpdateHeader, on_close: Closer) -> None:
        """Marks the update as streaming. A resumed upload of the same update (same upload id)
        takes over a stream of it that the server still holds (its client is gone: cut without
        a word), as in synchronous rounds; raises UploadInProgress for any other upload of the
        update streaming now, or when the stale stream does not end within TAKE_OVER_S."""
        partial_key = (header.run_id, header.round, header.agent_id)
        deadline = time.monotonic() + TAKE_OVER_S
        ended = False
        while True:
            with self._lock:
                if flight not in self._streaming:
                    self._streaming[flight] = on_close
                    return
                stale = self._streaming[flight]
            same = bool(header.upload_id) and self.ingest.partials.streaming_id(partial_key) == header.upload_id
            if stale is None or not same or time.monotonic() > deadline:
                raise UploadInProgress(f"an upload from agent {header.agent_id!r} for this round is already in progress")
            if not ended:
                stale(StreamEnded("a resumed upload of the same update took this stream's place"))
                ended = True
            time.sleep(0.02)

    def _check_header(self, target: Round, header: UpdateHeader, assigned: int) -> None:
        most, why = self.ingest.update_limit(target)
        if header.layout.total_bytes > most:
            LIMIT_HITS.labels(self.ingest.tenant, "aggregator", "max_update_bytes").inc()
            raise ResourceExhausted(f"the update declares {header.layout.total_bytes} bytes; this aggregator takes at most {most} {why}")
        self.ingest._check_metrics(header.metrics)
        assert target.wire is not None
        problem = header.layout.mismatch(target.wire)
        if problem:
            raise InvalidLayout(f"update does not match model {target.plan.base_version}: {problem}")
        self.staleness(target, assigned)

    def _spool_and_count(
        self, plan: RoundPlan, header: UpdateHeader, key: str, chunks: Chunks, before_count: Callable[[], object]
    ) -> tuple[bool, int]:
        ingest = self.ingest
        partial = ingest._open_partial(header)
        spool: Spool | None = partial.spool if partial is not None else None
        done = whole = False
        try:
            if spool is None:
                spool = ingest.spools.acquire(header.layout.total_bytes)
            receiver = receive_into(header.layout, header.resume_offset, chunks, spool, partial)
            whole = True
            with self._lock:  # received whole: a resumed upload no longer ends this stream
                if (plan.run_id, key) in self._streaming:
                    self._streaming[(plan.run_id, key)] = None
            self.ingest.check_finite(header.layout, spool.read_into)
            before_count()
            duplicate = self._count(plan, header, key, spool, receiver.received)
            done = True
            return duplicate, receiver.received
        finally:
            ingest._release(partial, spool, done=done, whole=whole, keep_spool=False)

    def _count(self, plan: RoundPlan, header: UpdateHeader, key: str, spool: Spool, received: int) -> bool:
        """Counts the verified update in the open buffer (the next one when the open one closed
        meanwhile); returns True when it had counted already."""
        while True:
            target = self.open_buffer(plan.run_id, BUFFER_WAIT_S)
            s = self.staleness(target, plan.round)
            assert target.plan.buffer is not None
            weight = target.strategy.weight(header.num_examples, header.metrics) * target.plan.buffer.factor(s)
            report = header.provenance.report(header.agent_id, header.num_examples,
                                              {**header.metrics, "staleness": float(s)}, received, weight,
                                              base_version=plan.base_version)
            if target.keeps_updates:
                self.ingest._keep_update(target, key, header.layout, spool)
            try:
                outcome = self._fold(target, plan, key, report, spool)
            except RoundNotOpen as e:
                if isinstance(e, RoundCancelled):
                    raise
                self.ingest._forget_kept(target)
                continue  # the buffer closed meanwhile: the next one takes it
            if outcome is None:
                return True
            self._counted(target, report, s, complete=outcome)
            return False

    def _fold(self, target: Round, plan: RoundPlan, key: str, report: UpdateReport, spool: Spool) -> bool | None:
        """Under the buffer's lock: None when the update counted already, else whether the
        buffer is full now. Raises RoundNotOpen when the buffer no longer takes updates."""
        buffer = target.plan.buffer
        assert buffer is not None and target.accumulator is not None
        with target.lock:
            target.check_accepting(self.table.clock())
            if len(target.reports) >= buffer.buffer_size:  # full, closing: the next buffer takes it
                raise RoundNotOpen(f"buffer {target.plan.round} of run {plan.run_id!r} is full")
            if self.counted(plan.run_id, key, plan.round, target.plan.round):
                return None
            if not self.journal.count(target.plan, report, key=key):
                return None
            target.reports[key] = report
            target.accumulator.fold(spool.read_into, report.weight, target.wire)
            return len(target.reports) >= buffer.buffer_size

    def _counted(self, target: Round, report: UpdateReport, s: int, *, complete: bool) -> None:
        plan = target.plan
        m.STALENESS.labels(self.ingest.tenant).observe(s)
        if plan.buffer is not None:
            m.BUFFER_FILL.labels(self.ingest.tenant).set(min(1.0, len(target.reports) / plan.buffer.buffer_size))
        with log_context(run_id=plan.run_id, round=plan.round, agent_id=report.agent_id):
            log.info("update buffered: %d examples, staleness %d, weight %.4g (%d of %d)", report.num_examples, s,
                     report.weight, len(target.reports), plan.buffer.buffer_size if plan.buffer else 0)
        target.notify()
        if complete:
            self.ingest.committer.close(target, "the buffer is full")
