"""The rounds an aggregator holds: each round's record with its single lock, its state machine
moves, its deadline timer and its watchers; and the checks a plan passes before it opens."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedstream.aggregation import WeightedAccumulator
from fedstream.compression import check_mode as check_compression
from fedstream.errors import (
    FailedPrecondition,
    FedstreamError,
    InvalidArgument,
    RoundCancelled,
    RoundClosed,
    RoundNotFound,
    RoundNotOpen,
    StreamEnded,
    Unavailable,
)
from fedstream.ids import check_run_id
from fedstream.lineage import parse_context
from fedstream.privacy_rules import check_combination
from fedstream.rounds import RoundKind, RoundPlan, RoundSnapshot, RoundState, UpdateReport
from fedstream.strategies import LinearStrategy, RobustStrategy, Strategy, make_strategy
from fedstream.tensors import Layout
from fedstream_aggregator import background
from fedstream_aggregator.distill import Distiller
from fedstream_aggregator.spool import Spool

if TYPE_CHECKING:
    from fedstream_aggregator.finishers import Finisher
    from fedstream_aggregator.secure import SecureRound

# Watchers of a training round get at most one snapshot per this many seconds.
WATCH_BATCH_S = 0.2
# Finished rounds stay answerable (WatchRound, duplicate uploads) until this many newer ones
# have finished.
KEEP_FINISHED_ROUNDS = 256
# A leaf fails a partial round that its root has not finished this long after the deadline.
PARTIAL_ROUND_TTL_S = 3600.0


@dataclass(eq=False)
class Round:
    """One round on this aggregator. ``lock`` guards every field that changes; ``changed`` is a
    condition on that same lock, signalled after each change watchers should see."""

    plan: RoundPlan
    strategy: Strategy
    finisher: Finisher
    layout: Layout | None
    accumulator: WeightedAccumulator | None
    # What an update's layout must be on the wire (the model's, or its compressed form).
    wire: Layout | None = None
    # Whether counted updates are copied to the model store (see ``keeps_updates``).
    keeps_updates: bool = False
    state: RoundState = RoundState.TRAINING
    reports: dict[str, UpdateReport] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)
    version: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    init_spool: Spool | None = None
    timer: threading.Timer | None = None
    # On a root: leaf index -> the participants that leaf takes; empty when not shared.
    shares: dict[int, tuple[str, ...]] = field(default_factory=dict)
    watching: bool = False
    # Ends the streams that follow the leaves.
    cancels: list[Callable[[], None]] = field(default_factory=list)
    # agent id -> ends its upload streaming now (called with the error its client is told when
    # the round stops taking updates).
    closers: dict[str, Callable[[FedstreamError], None]] = field(default_factory=dict)
    # Why the round's run was cancelled, read from the state store; "" when it was not (or the
    # store does not know the run). Asked once more when the round seals.
    run_cancelled: Callable[[], str] = lambda: ""
    # A commit is running in a worker thread (it frees what the round holds when it ends).
    committing: bool = False
    # The result is being made visible: an abort comes too late and waits for the commit.
    sealed: bool = False
    # The secure aggregation protocol of the round and its ring sum (instead of ``accumulator``).
    secure: SecureRound | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def terminal(self) -> bool:
        return self.state.terminal

    def move(self, to: RoundState, *, version: str = "", reason: str = "", keep_deadline: bool = False) -> bool:
        """Moves the round to ``to`` when its state machine allows (the caller holds ``lock``),
        disarming its deadline unless ``keep_deadline``; a terminal round drops its
        accumulator. False when the move is not allowed."""
        if not self.state.can_move_to(to):
            return False
        self.state = to
        if version:
            self.version = version
        if reason:
            self.reason = reason
        if self.timer is not None and not keep_deadline:
            self.timer.cancel()
        if to.terminal:
            self.accumulator = None
            if self.secure is not None:
                self.secure.release()
        if to is not RoundState.TRAINING:
            error: FedstreamError
            if to is RoundState.CANCELLED:
                error = RoundCancelled(self.cancelled_message())
            elif to in (RoundState.AGGREGATING, RoundState.COMMITTED):
                error = RoundClosed(self.closed_message())
            else:
                why = f"round {self.plan.round} of run {self.plan.run_id!r} is {to}, no longer taking updates"
                error = StreamEnded(f"this upload was ended: {why}")
            for close in self.closers.values():
                close(error)
        return True

    def cancelled_message(self) -> str:
        """What an upload to the cancelled round is told (the caller holds ``lock``)."""
        why = f": {self.reason}" if self.reason else ""
        return f"round {self.plan.round} of run {self.plan.run_id!r} was cancelled{why}"

    def closed_message(self) -> str:
        """What an update that comes after the round closed is told (the caller holds ``lock``,
        or accepts a count that may lag by one)."""
        n = len(self.reports)
        return (f"round {self.plan.round} of run {self.plan.run_id!r} closed with its {n} update{'s' * (n != 1)} "
                "and is not accepting updates: this one came late and is not counted")

    def seal(self) -> None:
        """Called by a finisher just before its result becomes visible (the version the run's
        latest): from here on the round commits, and an abort waits for it. Raises
        RoundCancelled when the round was aborted meanwhile, or its run was cancelled (the
        state store says so: a cancel whose abort never reached this aggregator)."""
        run_cancelled = self.run_cancelled()
        with self.lock:
            if self.state is RoundState.CANCELLED:
                raise RoundCancelled(self.cancelled_message())
            if run_cancelled:
                raise RoundCancelled(f"the run was cancelled: {run_cancelled}")
            self.sealed = True

    def notify(self) -> None:
        """Wakes the round's watchers (the caller does not hold ``lock``)."""
        with self.changed:
            self.seq += 1
            self.changed.notify_all()

    def stop_following(self) -> None:
        """Ends the streams that follow the round's leaves."""
        with self.lock:
            cancels, self.cancels = self.cancels, []
        for cancel in cancels:
            cancel()

    def check_accepting(self, now: float) -> None:
        """Raises RoundNotOpen unless the round trains and its deadline has not passed (the
        caller holds ``lock``, or accepts a stale answer that it checks again under it)."""
        if self.state is RoundState.CANCELLED:
            raise RoundCancelled(self.cancelled_message())
        if self.state in (RoundState.AGGREGATING, RoundState.COMMITTED):
            raise RoundClosed(self.closed_message())
        if self.state is not RoundState.TRAINING:
            raise RoundNotOpen(
                f"round {self.plan.round} of run {self.plan.run_id!r} is {self.state}, not accepting updates"
            )
        if now > self.plan.deadline_unix:
            raise RoundNotOpen(f"round {self.plan.round} of run {self.plan.run_id!r} passed its deadline")

    def snapshot(self) -> RoundSnapshot:
        """The round as its watchers see it (the caller holds ``lock``)."""
        reported = set(self.reports)
        # A buffer of an asynchronous run has no stragglers: its participants may upload later.
        waited = self.terminal() and self.plan.buffer is None
        stragglers = [a for a in self.plan.participants if a not in reported] if waited else []
        return RoundSnapshot(
            self.plan.run_id, self.plan.round, self.state, list(self.reports.values()), stragglers,
            self.version, self.reason, dict(self.metrics),
        )


def closing_reason(plan: RoundPlan, counted: int) -> str:
    """Why a round closes before its deadline with ``counted`` updates (logged)."""
    if counted >= len(plan.participants):
        return "all participants reported"
    return f"target_updates reached: {counted} of {len(plan.participants)} participants reported"


class RoundTable:
    """The rounds of this aggregator by (run, round), finished ones kept for a while."""

    def __init__(self, clock: Callable[[], float], on_deadline: Callable[[Round], None]) -> None:
        self.clock = clock
        self.on_deadline = on_deadline
        self._rounds: dict[tuple[str, int], Round] = {}
        self._lock = threading.Lock()
        self.closed = False
        # False while a restarted process is rebuilding its rounds: callers are told to retry.
        self.ready = True

    def find(self, run_id: str, round_: int) -> Round | None:
        with self._lock:
            return self._rounds.get((run_id, round_))

    def get(self, run_id: str, round_: int) -> Round:
        """Raises InvalidArgument for a malformed run id (never echoed whole), Unavailable while
        the aggregator is starting, RoundNotFound for a round it does not hold."""
        check_run_id(run_id)
        if not self.ready:
            raise Unavailable("the aggregator is starting; retry shortly")
        rnd = self.find(run_id, round_)
        if rnd is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} is not open on this aggregator")
        return rnd

    def install(self, rnd: Round) -> bool:
        """Makes a round current and arms its deadline; False if one was installed meanwhile."""
        key = (rnd.plan.run_id, rnd.plan.round)
        with self._lock:
            if key in self._rounds:
                return False
            self._rounds[key] = rnd
            self._prune()
        deadline = rnd.plan.deadline_unix + (PARTIAL_ROUND_TTL_S if rnd.plan.partial else 0.0)
        rnd.timer = background.after(max(0.0, deadline - self.clock()), self.on_deadline, rnd)
        return True

    def latest(self, run_id: str) -> Round | None:
        """The run's newest round held here."""
        with self._lock:
            rounds = [r for (run, _), r in self._rounds.items() if run == run_id]
        return max(rounds, key=lambda r: r.plan.round, default=None)

    def _prune(self) -> None:
        """Forgets the oldest finished rounds beyond KEEP_FINISHED_ROUNDS (caller holds _lock)."""
        finished = [k for k, r in self._rounds.items() if r.terminal()]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED_ROUNDS)]:
            del self._rounds[key]

    def close(self) -> list[Round]:
        """Marks the table closed and returns every round it holds."""
        with self._lock:
            self.closed = True
            return list(self._rounds.values())

    def snapshot(self, run_id: str, round_: int) -> RoundSnapshot:
        rnd = self.get(run_id, round_)
        with rnd.lock:
            return rnd.snapshot()

    def watch(self, run_id: str, round_: int, is_active: Callable[[], bool]) -> Iterator[RoundSnapshot]:
        """Yields the round's state now and after every change, until it is terminal.

        While the round trains, changes are batched: at most one snapshot per
        WATCH_BATCH_S, since each carries every report so far (a thousand uploads would
        otherwise send a million reports). A terminal state is sent at once."""
        rnd = self.get(run_id, round_)
        seen = -1
        last = -math.inf
        while is_active():
            with rnd.changed:
                if rnd.seq == seen:
                    rnd.changed.wait(timeout=1.0)
                    if rnd.seq == seen:
                        continue
                while rnd.state is RoundState.TRAINING and (left := last + WATCH_BATCH_S - time.monotonic()) > 0:
                    rnd.changed.wait(timeout=left)
                seen = rnd.seq
                snap = rnd.snapshot()
            last = time.monotonic()
            yield snap
            if snap.state.terminal:
                return


def checked_plan(plan: RoundPlan, distiller: Distiller | None) -> tuple[RoundPlan, Strategy]:
    """The plan with its kind as a RoundKind, and its strategy. Raises InvalidArgument for a
    malformed plan (a training round's privacy settings out of range, or combined with what
    they cannot work with: fedstream.privacy_rules), FailedPrecondition for a distillation this aggregator cannot run."""
    check_run_id(plan.run_id)
    try:
        kind = RoundKind(plan.kind)
    except ValueError:
        raise InvalidArgument(f"unknown round kind {plan.kind!r}") from None
    plan = dataclasses.replace(plan, kind=kind)
    _check_participants(plan)
    parse_context(plan.lineage_context)
    if not kind.needs_base and plan.base_version:
        raise InvalidArgument("an init round has no base version")
    if kind.needs_base and not plan.base_version:
        raise InvalidArgument(f"a{'n evaluation' if kind is RoundKind.EVALUATE else ' training'} round needs a base version")
    if kind is RoundKind.EVALUATE and plan.compression != "none":
        raise InvalidArgument("an evaluation round uploads reports only: its compression must be none")
    strategy = make_strategy(plan.strategy, plan.params())
    check_compression(plan.compression)
    if isinstance(strategy, RobustStrategy) and plan.compression != "none":
        raise InvalidArgument(f"strategy {strategy.name!r} needs uncompressed updates")
    if plan.partial and (kind is not RoundKind.TRAIN or not isinstance(strategy, LinearStrategy)):
        raise InvalidArgument("only training rounds of linear strategies can be shared among aggregators")
    if kind is RoundKind.TRAIN:
        check_combination(strategy, plan.privacy, plan.secure_aggregation, compression=plan.compression,
                          distill=plan.distill, buffered=plan.buffer is not None, partial=plan.partial,
                          participants=len(plan.participants))
    if plan.distill:
        _check_distill(plan, strategy, distiller)
    return plan, strategy


def _check_participants(plan: RoundPlan) -> None:
    if not plan.participants:
        raise InvalidArgument("a round needs at least one participant")
    if len(set(plan.participants)) != len(plan.participants):
        raise InvalidArgument("participants must be distinct")
    if not 1 <= plan.min_updates <= len(plan.participants):
        raise InvalidArgument(f"min_updates {plan.min_updates} must be between 1 and {len(plan.participants)}")
    if plan.target_updates and not plan.min_updates <= plan.target_updates <= len(plan.participants):
        raise InvalidArgument(
            f"target_updates {plan.target_updates} must be 0 or between min_updates {plan.min_updates} "
            f"and the {len(plan.participants)} participants"
        )


def _check_distill(plan: RoundPlan, strategy: Strategy, distiller: Distiller | None) -> None:
    if plan.kind is not RoundKind.TRAIN or plan.partial or not isinstance(strategy, LinearStrategy):
        raise InvalidArgument("only whole training rounds of linear strategies end with distillation")
    if plan.compression != "none":
        raise InvalidArgument("a round that ends with distillation needs uncompressed updates (compression none)")
    if not plan.task:
        raise InvalidArgument("a round that ends with distillation needs the run's task")
    if distiller is None:
        raise FailedPrecondition(
            "this aggregator holds no public set for distillation (set FEDSTREAM_AGGREGATOR_DISTILL__PUBLIC_DATA)"
        )
    distiller.check(plan.task)
