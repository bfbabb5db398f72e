"""The aggregator's logic, independent of gRPC: rounds, verified uploads, the running fold.

An upload is verified chunk by chunk (order, bounds, checksum) as it arrives and spooled to a
file; once the stream is complete and sound it is counted in the round's journal in the state
store (atomically, once per agent) and folded into the round's accumulator under the round's
lock. A bad upload therefore never touches the accumulator, and memory stays at one
accumulator plus a chunk per stream.

With ``durable=True`` (a shared state store) each counted update is also kept in the model
store until its round is committed, and ``recover`` rebuilds every unfinished round from the
journal after a restart: folding the kept updates again gives the same accumulator, so a
crash neither loses nor double-counts an update.

Hierarchical aggregation: a root aggregator given leaves shares each training round of a
linear strategy among them (participants dealt round-robin). Each leaf folds its share like a
single aggregator, but its round is ``partial``: it never commits; the root follows the
leaves' reports, and when the round closes collects each leaf's weighted sums, adds them into
one accumulator and commits the version as a single aggregator would. Every aggregator keeps
its own journal (``journal``), so they can share one state store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedstream.aggregation import (
    WeightedAccumulator,
    accumulator_dtype,
    from_accumulator,
    to_accumulator,
)
from fedstream.compression import check_mode as check_compression
from fedstream.compression import wire_layout
from fedstream.errors import (
    AgentNotSelected,
    AlreadyExists,
    CorruptModel,
    FailedPrecondition,
    FedstreamError,
    InvalidArgument,
    InvalidLayout,
    ModelNotFound,
    NonFinite,
    ResourceExhausted,
    RoundNotFound,
    RoundNotOpen,
    Unavailable,
    UploadInProgress,
)
from fedstream.logs import log_context
from fedstream.metrics import LIMIT_HITS
from fedstream.state import AggregationRecord, StateStore
from fedstream.store import ModelReader, ModelStore, ModelVersion, version_id
from fedstream.store.base import check_run_id
from fedstream.strategies import Strategy, make_strategy
from fedstream.strategies.robust import pairwise_sq_dist_update
from fedstream.tensors import (
    Chunk,
    ChunkReceiver,
    FlatBuffer,
    Layout,
    TensorSpec,
    check_chunk_bytes,
    crc32c,
    iter_chunks,
)
from fedstream_aggregator import metrics as m
from fedstream_aggregator.distill import Distiller

log = logging.getLogger(__name__)

# Watchers of a training round get at most one snapshot per this many seconds.
WATCH_BATCH_S = 0.2


@dataclass(frozen=True)
class RoundPlan:
    run_id: str
    round: int
    kind: str  # "init", "train" or "evaluate"
    base_version: str
    participants: tuple[str, ...]
    min_updates: int
    deadline_unix: float
    strategy: str = "fedavg"
    # The strategy's parameters as canonical JSON (sorted keys), so that plans compare equal.
    strategy_params: str = "{}"
    compression: str = "none"
    # A leaf's share of a hierarchical round (see the module's docstring).
    partial: bool = False
    # The run's task, and whether this round ends with server-side distillation.
    task: str = ""
    distill: bool = False


def combine_metrics(reports: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean over the reports that carry it, weighted by their example counts."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for r in reports:
        n = float(r["num_examples"])
        for name, value in r["metrics"].items():
            sums[name] = sums.get(name, 0.0) + n * float(value)
            weights[name] = weights.get(name, 0.0) + n
    return {name: sums[name] / weights[name] for name in sorted(sums) if weights[name] > 0}


class LeafLink(Protocol):
    """How a root reaches one of its leaves (fedstream_aggregator.leaves.Leaf over gRPC)."""

    endpoint: str
    public_endpoint: str

    def open_round(self, plan: RoundPlan) -> None: ...

    def watch(
        self, run_id: str, round_: int
    ) -> tuple[Iterator[tuple[str, list[dict[str, Any]]]], Callable[[], None]]: ...

    def collect(
        self, run_id: str, round_: int, timeout_s: float
    ) -> tuple[Layout, float, list[dict[str, Any]], Iterator[tuple[int, bytes, int]]]: ...

    def finish(self, run_id: str, round_: int, version: str, reason: str) -> None: ...


@dataclass(frozen=True)
class UpdateHeader:
    run_id: str
    round: int
    agent_id: str
    layout: Layout
    num_examples: int
    metrics: dict[str, float]


@dataclass
class RoundSnapshot:
    run_id: str
    round: int
    state: str
    reports: list[dict[str, Any]]
    stragglers: list[str]
    version: str
    reason: str
    # An evaluation round's combined metrics, once committed.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Round:
    plan: RoundPlan
    strategy: Strategy
    layout: Layout | None
    accumulator: WeightedAccumulator | None
    # What an update's layout must be on the wire (the model's, or its compressed form).
    wire: Layout | None = None
    state: str = "training"
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)
    version: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    init_spool: _Spool | None = None
    timer: threading.Timer | None = None
    # On a root: leaf index -> the participants that leaf takes; empty when not shared.
    shares: dict[int, tuple[str, ...]] = field(default_factory=dict)
    watching: bool = False
    # Ends the streams that follow the leaves.
    cancels: list[Callable[[], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def terminal(self) -> bool:
        return self.state in ("committed", "failed")

    def snapshot(self) -> RoundSnapshot:
        reported = set(self.reports)
        stragglers = (
            [a for a in self.plan.participants if a not in reported] if self.terminal() else []
        )
        return RoundSnapshot(
            self.plan.run_id,
            self.plan.round,
            self.state,
            [dict(r) for r in self.reports.values()],
            stragglers,
            self.version,
            self.reason,
            dict(self.metrics),
        )


# Finished rounds stay answerable (WatchRound, duplicate uploads) until this many newer ones
# have finished.
KEEP_FINISHED_ROUNDS = 256
# A leaf fails a partial round that its root has not finished this long after the deadline.
PARTIAL_ROUND_TTL_S = 3600.0
# Bytes of each kept update read at a time when a robust statistic combines them.
COMBINE_PIECE_BYTES = 4 << 20
# Seconds a root keeps trying to reach a leaf before it leaves that leaf's share out.
LEAF_RETRY_S = 30.0


# Bytes of an update read at a time when checking its values are finite.
FINITE_PIECE_BYTES = 1 << 20


def check_finite(layout: Layout, read_into: Callable[[int, memoryview], None]) -> None:
    """Raises NonFinite naming the first floating tensor of the update that holds a NaN or an
    infinity (scales of compressed updates included): such an update would poison the round's
    mean, so it is refused before it counts. Reads the spooled update piece by piece."""
    piece = bytearray(FINITE_PIECE_BYTES)
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


def _plan_of(journal: AggregationRecord) -> RoundPlan:
    return RoundPlan(
        journal.run_id, journal.round, journal.kind, journal.base_version,
        tuple(journal.participants), journal.min_updates, journal.deadline_unix,
        journal.strategy, journal.strategy_params, journal.compression, journal.partial,
        journal.task, journal.distill,
    )


class _Blocks:
    """Random-access reads of a stored object, each block checked against the CRC recorded
    when it was written (raises CorruptModel on a mismatch); the last block read is cached."""

    def __init__(self, reader: ModelReader) -> None:
        self._reader = reader
        self._info = reader.info
        self._total = reader.layout.total_bytes
        if not self._info.block_bytes and self._total:
            raise CorruptModel(f"{self._info.version} has no block checksums to verify")
        self._cached: tuple[int, bytes] = (-1, b"")

    def _block(self, index: int) -> bytes:
        if self._cached[0] != index:
            size = self._info.block_bytes
            data = self._reader.read_at(index * size, min(size, self._total - index * size))
            if crc32c(data) != self._info.block_crcs[index]:
                raise CorruptModel(f"{self._info.version} is corrupt: checksum mismatch in block {index}")
            self._cached = (index, data)
        return self._cached[1]

    def read_into(self, offset: int, out: memoryview) -> None:
        size = self._info.block_bytes
        filled = 0
        while filled < len(out):
            index, within = divmod(offset + filled, size)
            block = self._block(index)
            take = min(len(block) - within, len(out) - filled)
            out[filled : filled + take] = block[within : within + take]
            filled += take


class _Spool:
    """A file that receives a verified chunk stream.

    Space for the whole update is allocated before the first byte is written, so a full disk
    is known at once and writes never have to grow the file.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".bin")
        self.fd = fd
        self.path = Path(name)
        self.capacity = 0

    def reserve(self, size: int) -> None:
        if size > self.capacity:
            try:
                os.posix_fallocate(self.fd, 0, size)
            except OSError as e:
                raise ResourceExhausted(f"no room to receive an update of {size} bytes") from e
            self.capacity = size

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def read_into(self, offset: int, buffer: memoryview) -> None:
        while buffer:
            n = os.preadv(self.fd, [buffer], offset)
            if n == 0:
                raise OSError(f"spool file {self.path} is shorter than expected")
            buffer = buffer[n:]
            offset += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def _remove_dead_spools(spool_dir: Path) -> None:
    """Deletes the spool directories of aggregator processes that no longer run (killed ones
    leave theirs behind); each directory is named after its process id."""
    if not spool_dir.is_dir():
        return
    for d in spool_dir.iterdir():
        pid = d.name.split("-", 1)[0]
        if not d.is_dir() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


class SpoolPool:
    """Spool files reused from one upload to the next.

    Rewriting a file whose blocks and cached pages already exist is several times faster than
    writing a new one; up to ``keep`` idle files are kept for that, the rest are deleted.
    """

    def __init__(self, directory: Path, keep: int = 8) -> None:
        self.directory = directory
        self.keep = keep
        self._idle: list[_Spool] = []
        self._lock = threading.Lock()

    def acquire(self, size: int) -> _Spool:
        with self._lock:
            fitting = [s for s in self._idle if s.capacity >= size]
            spool = min(fitting, key=lambda s: s.capacity) if fitting else (
                max(self._idle, key=lambda s: s.capacity) if self._idle else None
            )
            if spool is not None:
                self._idle.remove(spool)
        if spool is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            spool = _Spool(self.directory)
        try:
            spool.reserve(size)
        except ResourceExhausted:
            spool.close()
            raise
        return spool

    def release(self, spool: _Spool) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(spool)
                return
        spool.close()

    def close(self) -> None:
        """Deletes the idle files and, when nothing else is in it, the pool's directory."""
        with self._lock:
            idle, self._idle = self._idle, []
        for spool in idle:
            spool.close()
        with contextlib.suppress(OSError):
            self.directory.rmdir()


class AggregatorService:
    """Rounds opened by the scheduler, uploads from agents, downloads of model versions."""

    def __init__(
        self,
        state: StateStore,
        store: ModelStore,
        spool_dir: Path,
        *,
        chunk_bytes: int,
        keep_last: int = 0,
        durable: bool = False,
        journal: str = "",
        leaves: Iterable[LeafLink] = (),
        distiller: Distiller | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.store = store
        _remove_dead_spools(Path(spool_dir))
        self.spools = SpoolPool(Path(spool_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.chunk_bytes = chunk_bytes
        # Largest update accepted (its declared bytes); the server sets it from its limits.
        self.max_update_bytes = 2 << 30
        self.keep_last = keep_last
        self.durable = durable
        self.journal = journal
        self.leaves = list(leaves)
        self.distiller = distiller
        self.clock = clock
        self._rounds: dict[tuple[str, int], _Round] = {}
        self._lock = threading.Lock()
        self._closed = False
        # False while a restarted process is rebuilding its rounds: callers are told to retry.
        self.ready = True

    # Round control.

    def open_round(self, plan: RoundPlan) -> dict[str, str]:
        """Opens a round for uploads; opening the same plan twice is a no-op. Returns where
        each participant that does not use this aggregator goes instead (a root's leaves).

        Raises InvalidArgument for a malformed plan, ModelNotFound for a missing base version,
        FailedPrecondition when a different plan for the same round exists, Unavailable when
        a leaf cannot be reached.
        """
        if not self.ready:
            raise Unavailable("the aggregator is starting; retry shortly")
        check_run_id(plan.run_id)
        if plan.kind not in ("init", "train", "evaluate"):
            raise InvalidArgument(f"unknown round kind {plan.kind!r}")
        if not plan.participants:
            raise InvalidArgument("a round needs at least one participant")
        if len(set(plan.participants)) != len(plan.participants):
            raise InvalidArgument("participants must be distinct")
        if not 1 <= plan.min_updates <= len(plan.participants):
            raise InvalidArgument(
                f"min_updates {plan.min_updates} must be between 1 and {len(plan.participants)}"
            )
        if plan.kind == "init" and plan.base_version:
            raise InvalidArgument("an init round has no base version")
        if plan.kind in ("train", "evaluate") and not plan.base_version:
            raise InvalidArgument(f"a{'n evaluation' if plan.kind == 'evaluate' else ' training'} round needs a base version")
        if plan.kind == "evaluate" and plan.compression != "none":
            raise InvalidArgument("an evaluation round uploads reports only: its compression must be none")
        strategy = make_strategy(plan.strategy, json.loads(plan.strategy_params))
        check_compression(plan.compression)
        if not strategy.linear and plan.compression != "none":
            raise InvalidArgument(f"strategy {strategy.name!r} needs uncompressed updates")
        if plan.partial and (plan.kind != "train" or not strategy.linear):
            raise InvalidArgument("only training rounds of linear strategies can be shared among aggregators")
        if plan.distill:
            self._check_distill(plan, strategy)
        key = (plan.run_id, plan.round)
        with self._lock:
            existing = self._rounds.get(key)
            if existing is not None and existing.plan != plan:
                raise FailedPrecondition(
                    f"round {plan.round} of run {plan.run_id!r} is already open with another plan"
                )
        if existing is not None:
            return self._open_shares(existing)
        layout = self.store.info(plan.base_version).layout if plan.kind == "train" else None
        if plan.kind == "evaluate":
            self.store.info(plan.base_version)  # ModelNotFound for a version that is not there
        try:
            self.state.create_aggregation(
                AggregationRecord(
                    plan.run_id, plan.round, plan.kind, plan.base_version, list(plan.participants),
                    plan.min_updates, plan.deadline_unix, plan.strategy, plan.strategy_params,
                    plan.compression, journal=self.journal, partial=plan.partial,
                    task=plan.task, distill=plan.distill,
                )
            )
        except AlreadyExists:
            journal = self.state.get_aggregation(plan.run_id, plan.round, self.journal)
            if _plan_of(journal) != plan:
                raise FailedPrecondition(
                    f"round {plan.round} of run {plan.run_id!r} is already open with another plan"
                ) from None
            self._restore(journal)
            return self._open_shares(self._get(plan.run_id, plan.round))
        shares = self._shares(plan, strategy)
        folds = layout is not None and strategy.linear and not shares
        rnd = _Round(plan, strategy, layout, WeightedAccumulator(layout) if folds else None,
                     wire=wire_layout(layout, plan.compression) if layout is not None else None,
                     shares=shares)
        if self._install(rnd):
            log.info(
                "round %d of %s open: %s, %d participants%s, base %s",
                plan.round, plan.run_id, plan.kind, len(plan.participants),
                f" shared among {len(shares)} leaves" if shares else "", plan.base_version or "-",
            )
        return self._open_shares(self._get(plan.run_id, plan.round))

    def _check_distill(self, plan: RoundPlan, strategy: Strategy) -> None:
        if plan.kind != "train" or plan.partial or not strategy.linear:
            raise InvalidArgument("only whole training rounds of linear strategies end with distillation")
        if plan.compression != "none":
            raise InvalidArgument("a round that ends with distillation needs uncompressed updates (compression none)")
        if not plan.task:
            raise InvalidArgument("a round that ends with distillation needs the run's task")
        if self.distiller is None:
            raise FailedPrecondition(
                "this aggregator holds no public set for distillation "
                "(set FEDSTREAM_AGGREGATOR_DISTILL__PUBLIC_DATA)"
            )
        self.distiller.check(plan.task)

    def _keeps_updates(self, plan: RoundPlan, strategy: Strategy) -> bool:
        """Whether counted updates are copied to the model store: to survive a restart, for
        strategies that combine them all at once, and as the teachers of distillation."""
        return plan.kind != "evaluate" and (self.durable or not strategy.linear or plan.distill)

    def _shares(self, plan: RoundPlan, strategy: Strategy) -> dict[int, tuple[str, ...]]:
        """Deals a root's training round round-robin among its leaves; init rounds, robust
        strategies and distillation (which need every update in one place) stay on the root."""
        if not self.leaves or plan.kind != "train" or not strategy.linear or plan.partial or plan.distill:
            return {}
        n = len(self.leaves)
        return {i: plan.participants[i::n] for i in range(n) if plan.participants[i::n]}

    def _open_shares(self, rnd: _Round) -> dict[str, str]:
        """Opens (again: leaves treat a repeat as a no-op) each leaf's share of a root's round
        and follows the leaves; returns each participant's leaf endpoint."""
        if not rnd.shares:
            return {}
        with rnd.lock:
            training = rnd.state == "training"
        if training:
            for i, agents in rnd.shares.items():
                self.leaves[i].open_round(
                    dataclasses.replace(rnd.plan, participants=agents, min_updates=1, partial=True)
                )
            self._follow_leaves(rnd)
        return {a: self.leaves[i].public_endpoint for i, agents in rnd.shares.items() for a in agents}

    def _follow_leaves(self, rnd: _Round) -> None:
        with rnd.lock:
            if rnd.watching:
                return
            rnd.watching = True
        for i in rnd.shares:
            threading.Thread(target=self._follow_leaf, args=(rnd, i), daemon=True, name="leaf-watch").start()

    def _follow_leaf(self, rnd: _Round, index: int) -> None:
        """Counts the updates a leaf reports, until the root's round stops training."""
        leaf, plan = self.leaves[index], rnd.plan
        delay = 0.2
        while not self._closed:
            with rnd.lock:
                if rnd.state != "training":
                    return
            try:
                events, cancel = leaf.watch(plan.run_id, plan.round)
            except FedstreamError:
                return  # shutting down
            with rnd.lock:
                rnd.cancels.append(cancel)
            try:
                for state, reports in events:
                    delay = 0.2
                    if not self._count_leaf_reports(rnd, reports):
                        return
                    if state == "failed":
                        log.warning("round %d of %s failed on leaf %s", plan.round, plan.run_id, leaf.endpoint)
                        return
            except FedstreamError as e:
                with rnd.lock:
                    if rnd.state != "training" or self._closed:
                        return  # the stream was ended on purpose
                log.warning("following round %d of %s on leaf %s: %s; retrying",
                            plan.round, plan.run_id, leaf.endpoint, e.public)
            finally:
                cancel()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _count_leaf_reports(self, rnd: _Round, reports: list[dict[str, Any]]) -> bool:
        """Counts newly reported updates of a leaf in the root's round; False once the round
        no longer trains."""
        plan = rnd.plan
        with rnd.lock:
            if rnd.state != "training":
                return False
            added = False
            for report in reports:
                agent = report["agent_id"]
                if agent in rnd.reports or agent not in plan.participants:
                    continue
                try:
                    self.state.count_update(plan.run_id, plan.round, agent, report, self.journal)
                except RoundNotOpen:
                    return False
                rnd.reports[agent] = report
                added = True
            complete = len(rnd.reports) == len(plan.participants)
        if added:
            self._notify(rnd)
        if complete:
            self._close(rnd, "all participants reported")
        return True

    def _install(self, rnd: _Round) -> bool:
        """Makes a round current and arms its deadline; False if one was installed meanwhile."""
        key = (rnd.plan.run_id, rnd.plan.round)
        with self._lock:
            if key in self._rounds:
                return False
            self._rounds[key] = rnd
            self._prune()
        deadline = rnd.plan.deadline_unix + (PARTIAL_ROUND_TTL_S if rnd.plan.partial else 0.0)
        delay = max(0.0, deadline - self.clock())
        rnd.timer = threading.Timer(delay, self._on_deadline, args=(rnd,))
        rnd.timer.daemon = True
        rnd.timer.start()
        return True

    def recover(self) -> int:
        """Rebuilds every round the journal has unfinished (after a restart); returns how many.

        Each counted update is read back from the model store and folded again, so the
        accumulator is the one the lost process had. A round whose updates were not kept
        (``durable=False``) cannot be rebuilt and is failed.
        """
        recovered = 0
        for journal in self.state.list_aggregations(self.journal):
            with self._lock:
                if (journal.run_id, journal.round) in self._rounds:
                    continue
            try:
                self._restore(journal)
                recovered += 1
            except FedstreamError as e:
                log.error("cannot recover round %d of %s: %s", journal.round, journal.run_id, e.public)
                with contextlib.suppress(FedstreamError):
                    self.state.set_aggregation_state(
                        journal.run_id, journal.round, "failed", self.journal,
                        reason=f"lost in a restart: {e.public}",
                    )
        return recovered

    def _restore(self, journal: AggregationRecord) -> None:
        plan = _plan_of(journal)
        with self._lock:
            if (plan.run_id, plan.round) in self._rounds:
                return
        strategy = make_strategy(plan.strategy, json.loads(plan.strategy_params))
        layout = self.store.info(plan.base_version).layout if plan.kind == "train" else None
        shares = self._shares(plan, strategy)
        # Init rounds and linear folds need the counted updates' bytes again; robust rounds
        # read theirs at commit, leaves hold a root's, evaluation rounds have none.
        refold = plan.kind == "init" or (plan.kind == "train" and strategy.linear and not shares)
        if journal.reports and refold and not self._keeps_updates(plan, strategy):
            raise FailedPrecondition("its counted updates were not kept (durable updates are off)")
        accumulator = (
            WeightedAccumulator(layout) if layout is not None and strategy.linear and not shares else None
        )
        wire = wire_layout(layout, plan.compression) if layout is not None else None
        for agent, report in journal.reports.items():
            if not refold:
                break
            with self.store.open_update(plan.run_id, plan.round, agent) as reader:
                if accumulator is not None:
                    weight = float(report.get("weight", report["num_examples"]))
                    accumulator.fold(_Blocks(reader).read_into, weight, wire)
                else:
                    layout = reader.layout
        rnd = _Round(plan, strategy, layout, accumulator, wire=wire, state=journal.state,
                     reports=dict(journal.reports), shares=shares)
        if not self._install(rnd):
            return
        log.info(
            "round %d of %s recovered: %s, %d of %d updates counted",
            plan.round, plan.run_id, journal.state, len(journal.reports), len(plan.participants),
        )
        if plan.partial:
            return  # the root collects it
        if journal.state == "aggregating":
            threading.Thread(target=self._commit, args=(rnd,), daemon=True, name="commit").start()
        elif len(rnd.reports) == len(plan.participants):
            self._close(rnd, "all participants reported")
        elif shares:
            threading.Thread(target=self._reopen_shares, args=(rnd,), daemon=True, name="leaf-open").start()

    def _reopen_shares(self, rnd: _Round) -> None:
        """After a restart: makes sure every leaf has its share open again, and follows them."""
        give_up = time.monotonic() + max(LEAF_RETRY_S, rnd.plan.deadline_unix - self.clock())
        delay = 0.2
        while True:
            try:
                self._open_shares(rnd)
                return
            except FedstreamError as e:
                if time.monotonic() + delay > give_up or not isinstance(e, Unavailable):
                    log.error("cannot reopen round %d of %s on the leaves: %s", rnd.plan.round, rnd.plan.run_id, e.public)
                    self._follow_leaves(rnd)
                    return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _prune(self) -> None:
        """Forgets the oldest finished rounds beyond KEEP_FINISHED_ROUNDS (caller holds _lock)."""
        finished = [k for k, r in self._rounds.items() if r.terminal()]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED_ROUNDS)]:
            del self._rounds[key]

    def _get(self, run_id: str, round_: int) -> _Round:
        if not self.ready:
            raise Unavailable("the aggregator is starting; retry shortly")
        with self._lock:
            rnd = self._rounds.get((run_id, round_))
        if rnd is None:
            raise RoundNotFound(f"round {round_} of run {run_id!r} is not open on this aggregator")
        return rnd

    def snapshot(self, run_id: str, round_: int) -> RoundSnapshot:
        rnd = self._get(run_id, round_)
        with rnd.lock:
            return rnd.snapshot()

    def watch(
        self, run_id: str, round_: int, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[RoundSnapshot]:
        """Yields the round's state now and after every change, until it is terminal.

        While the round trains, changes are batched: at most one snapshot per
        WATCH_BATCH_S, since each carries every report so far (a thousand uploads would
        otherwise send a million reports). A terminal state is sent at once."""
        rnd = self._get(run_id, round_)
        seen = -1
        last = -math.inf
        while is_active():
            with rnd.changed:
                if rnd.seq == seen:
                    rnd.changed.wait(timeout=1.0)
                    if rnd.seq == seen:
                        continue
                while rnd.state == "training" and (left := last + WATCH_BATCH_S - time.monotonic()) > 0:
                    rnd.changed.wait(timeout=left)
                seen = rnd.seq
            with rnd.lock:
                snap = rnd.snapshot()
            last = time.monotonic()
            yield snap
            if snap.state in ("committed", "failed"):
                return

    def _notify(self, rnd: _Round) -> None:
        with rnd.changed:
            rnd.seq += 1
            rnd.changed.notify_all()

    # Uploads.

    def receive_update(
        self, header: UpdateHeader, chunks: Iterable[tuple[int, bytes, int]],
        before_count: Callable[[], object] = lambda: None,
    ) -> tuple[bool, int]:
        """``_receive_update``, measured: chunks and bytes received, updates counted or refused.
        ``before_count`` runs once the update is verified, before it counts; what it raises
        refuses the update (an agent revoked during its upload)."""
        tenant = self.state.tenant
        counted = 0

        def counting() -> Iterator[tuple[int, bytes, int]]:
            nonlocal counted
            for item in chunks:
                counted += 1
                m.CHUNKS_RECEIVED.labels(tenant).inc()
                m.BYTES_RECEIVED.labels(tenant).inc(len(item[1]))
                yield item

        try:
            duplicate, received = self._receive_update(header, counting(), before_count)
        except FedstreamError as e:
            m.UPDATES_REJECTED.labels(tenant, e.code).inc()
            raise
        if not duplicate:
            with self._lock:
                rnd = self._rounds.get((header.run_id, header.round))
            m.UPDATES_FOLDED.labels(tenant, rnd.plan.kind if rnd is not None else "train").inc()
        return duplicate, received

    def _receive_update(
        self, header: UpdateHeader, chunks: Iterable[tuple[int, bytes, int]],
        before_count: Callable[[], object] = lambda: None,
    ) -> tuple[bool, int]:
        """Verifies, spools and folds one agent's update; returns (duplicate, bytes received).

        Raises RoundNotFound, AgentNotSelected, RoundNotOpen, InvalidLayout, InvalidArgument,
        BadOffset, ChecksumMismatch, Truncated or UploadInProgress. Whatever it raises, the
        accumulator is unchanged.
        """
        rnd = self._get(header.run_id, header.round)
        plan = rnd.plan
        agent = header.agent_id
        if agent not in plan.participants:
            raise AgentNotSelected(
                f"agent {agent!r} was not selected for round {plan.round} of run {plan.run_id!r}"
            )
        if header.layout.total_bytes > self.max_update_bytes:
            LIMIT_HITS.labels(self.state.tenant, "aggregator", "max_update_bytes").inc()
            raise ResourceExhausted(
                f"the update declares {header.layout.total_bytes} bytes; this aggregator takes at most "
                f"{self.max_update_bytes}"
            )
        for i, agents in rnd.shares.items():
            if agent in agents:
                raise FailedPrecondition(
                    f"agent {agent!r} uploads round {plan.round} of run {plan.run_id!r} to the leaf "
                    f"aggregator at {self.leaves[i].public_endpoint}"
                )
        with rnd.lock:
            if agent in rnd.reports:
                return True, 0
        self._check_accepting(rnd)
        if not all(np.isfinite(v) for v in header.metrics.values()):
            raise InvalidArgument("metrics must be finite numbers")
        weight = 0.0
        if plan.kind == "train":
            assert rnd.wire is not None
            problem = header.layout.mismatch(rnd.wire)
            if problem:
                how = "" if plan.compression == "none" else f" sent as {plan.compression}"
                raise InvalidLayout(f"update does not match model {plan.base_version}{how}: {problem}")
            weight = rnd.strategy.weight(header.num_examples, header.metrics)
        elif plan.kind == "evaluate":
            if header.layout.tensors:
                raise InvalidLayout("an evaluation round takes a report only: its layout must be empty")
            if header.num_examples == 0:
                raise InvalidArgument("an evaluation report needs the number of examples evaluated")
        with rnd.lock:
            if agent in rnd.uploading:
                raise UploadInProgress(
                    f"an upload from agent {agent!r} for this round is already in progress"
                )
            rnd.uploading.add(agent)
        started = time.perf_counter()
        spool: _Spool | None = None
        keep_spool = False
        try:
            spool = self.spools.acquire(header.layout.total_bytes)
            receiver = ChunkReceiver(header.layout, spool.write)
            for offset, data, crc in chunks:
                receiver.accept(offset, data, crc)
            receiver.finish()
            if plan.kind != "evaluate":
                check_finite(header.layout, spool.read_into)
            before_count()  # the agent may have been revoked while it uploaded
            if self._keeps_updates(plan, rnd.strategy):
                self._keep_update(plan, agent, header.layout, spool)
            report = {
                "agent_id": agent,
                "num_examples": header.num_examples,
                "metrics": dict(header.metrics),
                "bytes_received": receiver.received,
                "weight": weight,
            }
            with rnd.lock:
                self._check_accepting(rnd)
                if agent in rnd.reports:
                    return True, receiver.received
                if not self.state.count_update(plan.run_id, plan.round, agent, report, self.journal):
                    return True, receiver.received
                rnd.reports[agent] = report
                if plan.kind == "train" and rnd.accumulator is not None:
                    rnd.accumulator.fold(spool.read_into, weight, rnd.wire)
                elif plan.kind != "evaluate":
                    rnd.layout = header.layout
                    rnd.init_spool = spool
                    keep_spool = True
                complete = len(rnd.reports) == len(plan.participants) and not plan.partial
            with log_context(run_id=plan.run_id, round=plan.round, agent_id=agent):
                log.info(
                    "update folded: %d examples, %d bytes in %.2f s",
                    header.num_examples, receiver.received, time.perf_counter() - started,
                )
            self._notify(rnd)
            if complete:
                self._close(rnd, "all participants reported")
            return False, receiver.received
        finally:
            with rnd.lock:
                rnd.uploading.discard(agent)
            if spool is not None and not keep_spool:
                self.spools.release(spool)

    def _keep_update(self, plan: RoundPlan, agent: str, layout: Layout, spool: _Spool) -> None:
        """Copies a verified update from its spool file into the model store."""
        piece = bytearray(min(self.chunk_bytes, max(layout.total_bytes, 1)))
        with self.store.update_writer(plan.run_id, plan.round, agent, layout) as writer:
            for start in range(0, layout.total_bytes, len(piece)):
                view = memoryview(piece)[: min(len(piece), layout.total_bytes - start)]
                spool.read_into(start, view)
                writer.write(view)
            writer.commit(set_latest=False)

    def _check_accepting(self, rnd: _Round) -> None:
        if rnd.state != "training":
            raise RoundNotOpen(
                f"round {rnd.plan.round} of run {rnd.plan.run_id!r} is {rnd.state}, not accepting updates"
            )
        if self.clock() > rnd.plan.deadline_unix:
            raise RoundNotOpen(
                f"round {rnd.plan.round} of run {rnd.plan.run_id!r} passed its deadline"
            )

    # Closing a round.

    def _on_deadline(self, rnd: _Round) -> None:
        if rnd.plan.partial:
            self._fail(rnd, "the root aggregator never finished this share of the round")
            return
        with rnd.lock:
            if rnd.state != "training":
                return
            n = len(rnd.reports)
        if n >= rnd.plan.min_updates:
            self._close(rnd, f"deadline passed with {n} of {len(rnd.plan.participants)} updates")
        else:
            self._fail(
                rnd,
                f"deadline passed with {n} of {len(rnd.plan.participants)} updates, "
                f"at least {rnd.plan.min_updates} needed",
            )

    def _journal(self, rnd: _Round, state: str, **changes: Any) -> None:
        try:
            self.state.set_aggregation_state(rnd.plan.run_id, rnd.plan.round, state, self.journal, **changes)
        except FedstreamError as e:
            log.warning("journal of round %d of %s: %s", rnd.plan.round, rnd.plan.run_id, e.public)

    def _fail(self, rnd: _Round, reason: str) -> None:
        with rnd.lock:
            if rnd.terminal():
                return
            rnd.state = "failed"
            rnd.reason = reason
            rnd.accumulator = None
            if rnd.timer is not None:
                rnd.timer.cancel()
        self._stop_following(rnd)
        self._journal(rnd, "failed", reason=reason)
        log.warning("round %d of %s failed: %s", rnd.plan.round, rnd.plan.run_id, reason)
        self._notify(rnd)
        self._discard_updates(rnd)

    def _close(self, rnd: _Round, why: str) -> None:
        """Moves the round to aggregating (once) and commits it in a worker thread."""
        with rnd.lock:
            if rnd.state != "training":
                return
            rnd.state = "aggregating"
            if rnd.timer is not None:
                rnd.timer.cancel()
        self._stop_following(rnd)
        self._journal(rnd, "aggregating")
        log.info("round %d of %s aggregating: %s", rnd.plan.round, rnd.plan.run_id, why)
        self._notify(rnd)
        threading.Thread(target=self._commit, args=(rnd,), daemon=True, name="commit").start()

    def _commit_evaluation(self, rnd: _Round) -> None:
        """Combines an evaluation round's reports and records them with the version."""
        plan = rnd.plan
        metrics = combine_metrics(list(rnd.reports.values()))
        record = {
            "run_id": plan.run_id,
            "round": plan.round,
            "metrics": metrics,
            "examples": sum(r["num_examples"] for r in rnd.reports.values()),
            "reports": [dict(r) for r in rnd.reports.values()],
            "finished_unix": self.clock(),
        }
        try:
            self.store.put_evaluation(plan.base_version, f"{plan.run_id}-{plan.round:06d}", record)
        except FedstreamError as e:
            self._fail_aggregating(rnd, f"cannot record the evaluation: {e.public}")
            return
        self._journal(rnd, "committed", version=plan.base_version)
        with rnd.lock:
            rnd.state = "committed"
            rnd.version = plan.base_version
            rnd.metrics = metrics
        log.info("round %d of %s: evaluation of %s recorded: %s", plan.round, plan.run_id, plan.base_version,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        self._notify(rnd)

    def _stop_following(self, rnd: _Round) -> None:
        with rnd.lock:
            cancels, rnd.cancels = rnd.cancels, []
        for cancel in cancels:
            cancel()

    def _commit(self, rnd: _Round) -> None:
        started = time.perf_counter()
        try:
            self._commit_round(rnd)
        finally:
            outcome = rnd.state if rnd.state in ("committed", "failed") else "unknown"
            m.COMMITS.labels(self.state.tenant, rnd.plan.kind, outcome).inc()
            if outcome == "committed":
                m.AGGREGATION_SECONDS.labels(self.state.tenant, rnd.strategy.name).observe(time.perf_counter() - started)

    def _commit_round(self, rnd: _Round) -> None:
        plan = rnd.plan
        if plan.kind == "evaluate":
            self._commit_evaluation(rnd)
            return
        try:
            if rnd.shares:
                self._collect(rnd)
            info = self._write_version(rnd)
        except FedstreamError as e:
            self._fail_aggregating(rnd, f"commit failed: {e.public}")
            return
        except Exception as e:
            log.exception("commit of round %d of %s failed", plan.round, plan.run_id)
            self._fail_aggregating(rnd, f"commit failed: {type(e).__name__}")
            return
        self._journal(rnd, "committed", version=info.version)
        with rnd.lock:
            rnd.state = "committed"
            rnd.version = info.version
            rnd.accumulator = None
        log.info("round %d of %s committed as %s", plan.round, plan.run_id, info.version)
        self._notify(rnd)
        self._discard_updates(rnd)
        if self.keep_last:
            try:
                deleted = self.store.apply_retention(plan.run_id, self.keep_last)
            except FedstreamError as e:
                log.warning("retention of run %s failed: %s", plan.run_id, e.public)
            else:
                if deleted:
                    log.info("retention removed %s", ", ".join(deleted))

    def _fail_aggregating(self, rnd: _Round, reason: str) -> None:
        with rnd.lock:
            rnd.state = "failed"
            rnd.reason = reason
            rnd.accumulator = None
        self._journal(rnd, "failed", reason=reason)
        log.error("round %d of %s failed: %s", rnd.plan.round, rnd.plan.run_id, reason)
        self._notify(rnd)
        self._discard_updates(rnd)

    def _discard_updates(self, rnd: _Round) -> None:
        for i in rnd.shares:
            try:
                self.leaves[i].finish(rnd.plan.run_id, rnd.plan.round, rnd.version, rnd.reason)
            except FedstreamError as e:
                log.warning("cannot finish round %d on leaf %s: %s", rnd.plan.round, self.leaves[i].endpoint, e.public)
        if rnd.init_spool is not None:
            self.spools.release(rnd.init_spool)
            rnd.init_spool = None
        if self._keeps_updates(rnd.plan, rnd.strategy):
            try:
                self.store.delete_updates(rnd.plan.run_id, rnd.plan.round)
            except FedstreamError as e:
                log.warning("cannot delete the kept updates of round %d: %s", rnd.plan.round, e.public)

    # Hierarchical rounds.

    def _collect(self, rnd: _Round) -> None:
        """On a root: adds every leaf's sums into the round's accumulator; the reports of the
        sums received replace those counted while following the leaves. A leaf that cannot
        be reached for LEAF_RETRY_S, or that lost its share, is left out."""
        plan = rnd.plan
        assert rnd.layout is not None
        with contextlib.suppress(ModelNotFound):
            self.store.info(version_id(plan.run_id, plan.round))
            return  # committed before a restart; _write_version finds it
        accumulator = WeightedAccumulator(rnd.layout)
        reports: dict[str, dict[str, Any]] = {}
        for i in sorted(rnd.shares):
            leaf = self.leaves[i]
            give_up = time.monotonic() + LEAF_RETRY_S
            delay = 0.2
            while True:
                try:
                    reports.update(self._collect_leaf(leaf, rnd, accumulator))
                    break
                except Unavailable as e:
                    if time.monotonic() + delay > give_up:
                        log.error("round %d of %s: leaving out leaf %s: %s", plan.round, plan.run_id, leaf.endpoint, e.public)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                except (RoundNotFound, FailedPrecondition) as e:
                    log.error("round %d of %s: leaving out leaf %s: %s", plan.round, plan.run_id, leaf.endpoint, e.public)
                    break
        if len(reports) < plan.min_updates:
            raise FailedPrecondition(
                f"the leaves hold {len(reports)} updates, at least {plan.min_updates} needed"
            )
        with rnd.lock:
            rnd.reports = reports
            rnd.accumulator = accumulator
        log.info("round %d of %s: %d updates collected from %d leaves", plan.round, plan.run_id, len(reports), len(rnd.shares))

    def _collect_leaf(
        self, leaf: LeafLink, rnd: _Round, accumulator: WeightedAccumulator
    ) -> dict[str, dict[str, Any]]:
        """Receives one leaf's sums (verified chunk by chunk into a spool file) and adds them;
        the accumulator is unchanged unless every byte arrived sound."""
        plan = rnd.plan
        expected = accumulator.sums_layout()
        layout, total_weight, reports, chunks = leaf.collect(
            plan.run_id, plan.round, max(60.0, expected.total_bytes / 10e6)
        )
        problem = layout.mismatch(expected)
        if problem:
            raise FailedPrecondition(f"leaf {leaf.endpoint} sent sums that do not fit the model: {problem}")
        foreign = [r["agent_id"] for r in reports if r["agent_id"] not in plan.participants]
        if foreign:
            raise FailedPrecondition(f"leaf {leaf.endpoint} reported agents not in the round: {foreign}")
        spool = self.spools.acquire(layout.total_bytes)
        try:
            receiver = ChunkReceiver(layout, spool.write)
            for offset, data, crc in chunks:
                receiver.accept(offset, data, crc)
            receiver.finish()
            if reports:
                accumulator.merge(spool.read_into, total_weight, len(reports))
        finally:
            self.spools.release(spool)
        return {r["agent_id"]: r for r in reports}

    def collect_partial(
        self, run_id: str, round_: int
    ) -> tuple[Layout, float, list[dict[str, Any]], Iterator[Chunk]]:
        """On a leaf: stops the partial round taking updates and returns its sums' layout,
        total weight, reports and the sums as chunks. Repeatable until the round is finished.
        Raises RoundNotFound, or FailedPrecondition for a round that is not partial or is
        finished."""
        rnd = self._get(run_id, round_)
        if not rnd.plan.partial:
            raise FailedPrecondition(f"round {round_} of run {run_id!r} is not a share of a hierarchical round")
        with rnd.lock:
            if rnd.terminal() or rnd.accumulator is None:
                raise FailedPrecondition(f"round {round_} of run {run_id!r} is {rnd.state} on this leaf")
            moved = rnd.state == "training"
            rnd.state = "aggregating"
            accumulator = rnd.accumulator
            reports = [dict(r) for r in rnd.reports.values()]
        if moved:
            self._journal(rnd, "aggregating")
            self._notify(rnd)
            log.info("round %d of %s: %d updates handed to the root", round_, run_id, len(reports))
        layout = accumulator.sums_layout()
        buffers = [a.view(np.uint8) for a in accumulator.sums()]
        return layout, accumulator.total_weight, reports, iter_chunks(layout, buffers, self.chunk_bytes)

    def finish_partial(self, run_id: str, round_: int, version: str, reason: str) -> None:
        """On a leaf: the root finished the round (committed ``version``, or failed for
        ``reason``); frees the round's sums and kept updates. A share the root never collected
        is failed. Finishing a finished round is a no-op."""
        rnd = self._get(run_id, round_)
        if not rnd.plan.partial:
            raise FailedPrecondition(f"round {round_} of run {run_id!r} is not a share of a hierarchical round")
        with rnd.lock:
            if rnd.terminal():
                return
            collected = rnd.state == "aggregating"
            if version and collected:
                rnd.state, rnd.version = "committed", version
            else:
                rnd.state = "failed"
                rnd.reason = reason or f"the root committed {version} without this share"
            rnd.accumulator = None
            if rnd.timer is not None:
                rnd.timer.cancel()
        if rnd.state == "committed":
            self._journal(rnd, "committed", version=version)
        else:
            self._journal(rnd, "failed", reason=rnd.reason)
        log.info("round %d of %s finished by the root: %s", round_, run_id, rnd.state)
        self._notify(rnd)
        self._discard_updates(rnd)

    def _write_version(self, rnd: _Round) -> ModelVersion:
        plan = rnd.plan
        assert rnd.layout is not None
        version = version_id(plan.run_id, plan.round)
        metadata = {
            "fedstream.run_id": plan.run_id,
            "fedstream.round": str(plan.round),
            "fedstream.kind": plan.kind,
            "fedstream.base_version": plan.base_version,
            "fedstream.updates": str(len(rnd.reports)),
            "fedstream.examples": str(sum(r["num_examples"] for r in rnd.reports.values())),
        }
        try:
            writer = self.store.writer(version, rnd.layout, metadata)
        except AlreadyExists:
            # Written by a process that died before journaling the commit: a stored version
            # is complete (its manifest is written last), so it is this round's result.
            log.info("round %d of %s: version %s was stored before a restart", plan.round, plan.run_id, version)
            return self.store.info(version)
        with writer:
            if plan.kind == "init" and rnd.init_spool is not None:
                spool, rnd.init_spool = rnd.init_spool, None
                try:
                    piece = bytearray(self.chunk_bytes)
                    total = rnd.layout.total_bytes
                    for start in range(0, total, self.chunk_bytes):
                        view = memoryview(piece)[: min(self.chunk_bytes, total - start)]
                        spool.read_into(start, view)
                        writer.write(view)
                finally:
                    self.spools.release(spool)
            elif plan.kind == "init":
                (agent,) = rnd.reports
                with self.store.open_update(plan.run_id, plan.round, agent) as reader:
                    for chunk in reader.iter_chunks(self.chunk_bytes):
                        writer.write(chunk.data)
            else:
                self._finish_strategy(rnd, version, writer)
            return writer.commit()

    def _finish_strategy(self, rnd: _Round, version: str, writer: Any) -> None:
        """Writes the round's result tensor by tensor: the strategy's server update of each
        weighted mean, reading the base tensor and the strategy's state as it needs them, and
        writing its new state beside the version (before the version itself)."""
        plan, strategy = rnd.plan, rnd.strategy
        if not strategy.linear:
            self._finish_robust(rnd, writer)
            return
        if plan.distill:
            self._finish_distilled(rnd, version, writer)
            return
        assert rnd.accumulator is not None and rnd.layout is not None
        slots = strategy.state_slots
        floats = [t for t in rnd.layout.tensors if t.dt.is_float]
        state_layout = Layout.build((f"{t.name}/{s}", "float32", t.shape) for t in floats for s in slots)
        with contextlib.ExitStack() as stack:
            base = None
            deltas = plan.compression == "int8"  # the means of floating tensors are changes
            if strategy.needs_base or deltas:
                base = _Blocks(stack.enter_context(self.store.open(plan.base_version)))
            old_state = None
            if slots:
                try:
                    reader = stack.enter_context(self.store.open_state(plan.base_version))
                except ModelNotFound:
                    reader = None
                if reader is not None:
                    if reader.layout != state_layout:
                        raise FailedPrecondition(f"the strategy state of {plan.base_version} does not fit the model")
                    old_state = _Blocks(reader)
            new_state = stack.enter_context(self.store.state_writer(version, state_layout)) if slots else None
            for spec, mean in rnd.accumulator.means():
                base_values = None
                if base is not None:
                    raw = bytearray(spec.nbytes)
                    base.read_into(spec.offset, memoryview(raw))
                    base_values = to_accumulator(spec.dt, np.frombuffer(raw, dtype=spec.dt.storage))
                    if deltas and spec.dt.is_float:
                        mean = base_values + mean
                state_in = None
                if old_state is not None and spec.dt.is_float:
                    state_in = {}
                    for s in slots:
                        t = state_layout.spec(f"{spec.name}/{s}")
                        raw = bytearray(t.nbytes)
                        old_state.read_into(t.offset, memoryview(raw))
                        state_in[s] = np.frombuffer(raw, dtype=np.float32)
                values, state_out = strategy.server_update(spec, mean, base_values, state_in)
                writer.write(np.ascontiguousarray(from_accumulator(spec.dt, values)).view(np.uint8).data)
                if new_state is not None and spec.dt.is_float:
                    for s in slots:
                        new_state.write(np.ascontiguousarray(state_out[s], dtype=np.float32).view(np.uint8).data)
            if new_state is not None:
                new_state.commit(set_latest=False)

    def _finish_distilled(self, rnd: _Round, version: str, writer: Any) -> None:
        """The weighted mean (held whole: one model), distilled on the public set with every
        counted update, read back from the model store one at a time, as a teacher."""
        plan = rnd.plan
        assert rnd.accumulator is not None and rnd.layout is not None and self.distiller is not None
        mean = FlatBuffer(rnd.layout)
        for spec, values in rnd.accumulator.means():
            out, _ = rnd.strategy.server_update(spec, values, None, None)
            mean.write(spec.offset, np.ascontiguousarray(from_accumulator(spec.dt, out)).view(np.uint8).data)

        def teachers() -> Iterator[FlatBuffer]:
            for agent in rnd.reports:
                with self.store.open_update(plan.run_id, plan.round, agent) as reader:
                    buffer = FlatBuffer(reader.layout)
                    for chunk in reader.iter_chunks(self.chunk_bytes):
                        buffer.write(chunk.offset, chunk.data)
                yield buffer

        started = time.perf_counter()
        lr = float(getattr(rnd.strategy.params, "distill_lr", 5e-4))
        pieces, figures = self.distiller.distill(plan.task, mean, teachers(), lr)
        for piece in pieces:
            writer.write(piece)
        with rnd.lock:
            rnd.metrics = dict(figures)
        log.info(
            "round %d of %s distilled on %d public images from %d teachers in %.1f s: embedding MSE %.5f -> %.5f",
            plan.round, plan.run_id, int(figures.get("distill_images", 0)), int(figures.get("distill_teachers", 0)),
            time.perf_counter() - started, figures.get("distill_mse_before", 0.0), figures.get("distill_mse_after", 0.0),
        )

    def _finish_robust(self, rnd: _Round, writer: Any) -> None:
        """Combines every kept update piece by piece (a robust statistic per coordinate), with a
        first pass for pairwise distances when the strategy selects updates (multi-Krum).
        Memory: the pieces of all updates at one offset, never whole updates."""
        plan, strategy = rnd.plan, rnd.strategy
        assert rnd.layout is not None
        agents = list(rnd.reports)
        chosen = list(range(len(agents)))
        if strategy.needs_distances:
            sq = np.zeros((len(agents), len(agents)))
            for _, pieces in self._kept_pieces(plan, agents, rnd.layout):
                pairwise_sq_dist_update(sq, pieces)
            selected = strategy.select(sq)  # type: ignore[attr-defined]
            if selected is not None:
                chosen = selected
                log.info("round %d of %s: %s selected %s", plan.round, plan.run_id, strategy.name,
                         ", ".join(agents[i] for i in chosen))
        current: TensorSpec | None = None
        out: np.ndarray | None = None
        for (spec, lo), pieces in self._kept_pieces(plan, agents, rnd.layout):
            if spec is not current:
                current = spec
                out = np.empty(spec.numel, dtype=pieces.dtype)
            assert out is not None
            out[lo : lo + pieces.shape[1]] = strategy.combine(pieces[chosen])  # type: ignore[attr-defined]
            if lo + pieces.shape[1] == spec.numel:
                writer.write(np.ascontiguousarray(from_accumulator(spec.dt, out)).view(np.uint8).data)

    def _kept_pieces(
        self, plan: RoundPlan, agents: list[str], layout: Layout
    ) -> Iterator[tuple[tuple[TensorSpec, int], np.ndarray]]:
        """((tensor, first element), (agents, n) accumulator-dtype values) over the whole layout,
        read in lockstep from every agent's kept update."""
        with contextlib.ExitStack() as stack:
            readers = [
                _Blocks(stack.enter_context(self.store.open_update(plan.run_id, plan.round, a))) for a in agents
            ]
            # agents x piece bytes are in memory at once: keep that near one model's size.
            budget = max(64 << 10, min(COMBINE_PIECE_BYTES, layout.total_bytes // max(1, len(agents))))
            piece = bytearray(budget)
            for t in layout.tensors:
                item = t.dt.itemsize
                step = max(item, budget - budget % item)
                for start in range(0, t.nbytes, step):
                    n = min(step, t.nbytes - start)
                    rows = np.empty((len(readers), n // item), dtype=accumulator_dtype(t.dt))
                    view = memoryview(piece)[:n]
                    for i, r in enumerate(readers):
                        r.read_into(t.offset + start, view)
                        rows[i] = to_accumulator(t.dt, np.frombuffer(view, dtype=t.dt.storage))
                    yield (t, start // item), rows

    # Downloads.

    def open_model(self, run_id: str, version: str, chunk_bytes: int) -> tuple[ModelVersion, Iterator[Chunk]]:
        """The version's header and an iterator of its chunks (which raises CorruptModel at
        the end if the stored bytes do not match their digest). Raises ModelNotFound."""
        chunk_bytes = check_chunk_bytes(chunk_bytes or self.chunk_bytes)
        if not version:
            check_run_id(run_id)
            latest = self.store.latest(run_id)
            if latest is None:
                raise ModelNotFound(f"run {run_id!r} has no committed model yet")
            version = latest
        reader = self.store.open(version)

        tenant = self.state.tenant

        def chunks() -> Iterator[Chunk]:
            with reader:
                for chunk in reader.iter_chunks(chunk_bytes):
                    m.CHUNKS_SENT.labels(tenant).inc()
                    m.BYTES_SENT.labels(tenant).inc(len(chunk.data))
                    yield chunk

        return reader.info, chunks()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            rounds = list(self._rounds.values())
        for rnd in rounds:
            if rnd.timer is not None:
                rnd.timer.cancel()
            self._stop_following(rnd)
        self.spools.close()
