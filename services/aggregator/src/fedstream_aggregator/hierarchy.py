"""Hierarchical aggregation: a root deals a training round's participants among its leaves,
follows the leaves' reports, and at commit collects and adds their weighted sums; a leaf hands
its share's sums to the root and is told when the root finished the round."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from fedstream.aggregation import WeightedAccumulator
from fedstream.errors import (
    FailedPrecondition,
    FedstreamError,
    ModelNotFound,
    RoundNotFound,
    RoundNotOpen,
    Unavailable,
)
from fedstream.rounds import RoundKind, RoundPlan, RoundSnapshot, RoundState, UpdateReport
from fedstream.store import ModelStore, version_id
from fedstream.strategies import LinearStrategy, Strategy
from fedstream.tensors import Chunk, ChunkReceiver, Layout, iter_chunks
from fedstream_aggregator import background
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.rounds import Round, RoundTable, closing_reason
from fedstream_aggregator.spool import SpoolPool

log = logging.getLogger(__name__)

# Seconds a root keeps trying to reach a leaf before it leaves that leaf's share out.
LEAF_RETRY_S = 30.0


class LeafLink(Protocol):
    """How a root reaches one of its leaves (fedstream_aggregator.leaves.Leaf over gRPC)."""

    endpoint: str
    public_endpoint: str

    def open_round(self, plan: RoundPlan) -> None: ...

    def watch(self, run_id: str, round_: int) -> tuple[Iterator[RoundSnapshot], Callable[[], None]]: ...

    def collect(
        self, run_id: str, round_: int, timeout_s: float
    ) -> tuple[Layout, float, list[UpdateReport], Iterator[tuple[int, bytes, int]]]: ...

    def finish(self, run_id: str, round_: int, version: str, reason: str) -> None: ...


class Closer(Protocol):
    """What the hierarchy asks of the round's lifecycle (fedstream_aggregator.commit.Committer)."""

    def close(self, rnd: Round, why: str) -> None: ...

    def discard(self, rnd: Round) -> None: ...


def retrying(attempt: Callable[[], object], give_up: float, retry: Callable[[FedstreamError], bool]) -> None:
    """Calls ``attempt`` until it returns, backing off from 0.2 s to 5 s; re-raises its error
    when ``retry`` refuses it or the monotonic clock would pass ``give_up`` while waiting."""
    delay = 0.2
    while True:
        try:
            attempt()
            return
        except FedstreamError as e:
            if not retry(e) or time.monotonic() + delay > give_up:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _unavailable(e: FedstreamError) -> bool:
    return isinstance(e, Unavailable)


class Hierarchy:
    """The leaves of a root aggregator (none on a single aggregator or a leaf)."""

    def __init__(
        self, leaves: Iterable[LeafLink], table: RoundTable, journal: Journal, store: ModelStore,
        spools: SpoolPool, *, chunk_bytes: int,
    ) -> None:
        self.leaves = list(leaves)
        self.table = table
        self.journal = journal
        self.store = store
        self.spools = spools
        self.chunk_bytes = chunk_bytes
        self.closer: Closer | None = None
        # Makes the accumulator a root merges its leaves' sums into (the service sets it).
        self.accumulators: Callable[[Layout], WeightedAccumulator] = WeightedAccumulator

    def bind(self, closer: Closer) -> None:
        self.closer = closer

    def _closer(self) -> Closer:
        assert self.closer is not None
        return self.closer

    # On a root.

    def shares(self, plan: RoundPlan, strategy: Strategy) -> dict[int, tuple[str, ...]]:
        """Deals a root's training round round-robin among its leaves; init rounds, robust
        strategies and distillation (which need every update in one place) stay on the root, and
        so do rounds under differential privacy or secure aggregation (each update is clipped,
        or unmasked, where it is counted)."""
        linear = isinstance(strategy, LinearStrategy)
        if not self.leaves or plan.kind is not RoundKind.TRAIN or not linear or plan.partial or plan.distill:
            return {}
        if plan.privacy is not None or plan.secure_aggregation is not None:
            return {}
        n = len(self.leaves)
        return {i: plan.participants[i::n] for i in range(n) if plan.participants[i::n]}

    def leaf_of(self, rnd: Round, agent: str) -> str:
        """The public endpoint of the leaf that takes ``agent``'s update, "" when none does."""
        for i, agents in rnd.shares.items():
            if agent in agents:
                return self.leaves[i].public_endpoint
        return ""

    def open_shares(self, rnd: Round) -> dict[str, str]:
        """Opens (again: leaves treat a repeat as a no-op) each leaf's share of a root's round
        and follows the leaves; returns each participant's leaf endpoint."""
        if not rnd.shares:
            return {}
        with rnd.lock:
            training = rnd.state is RoundState.TRAINING
        if training:
            for i, agents in rnd.shares.items():
                self.leaves[i].open_round(
                    dataclasses.replace(rnd.plan, participants=agents, min_updates=1, partial=True)
                )
            self.follow(rnd)
        return {a: self.leaves[i].public_endpoint for i, agents in rnd.shares.items() for a in agents}

    def reopen_later(self, rnd: Round) -> None:
        """After a restart, in a worker thread: makes sure every leaf has its share open
        again, and follows them."""
        background.spawn("leaf-open", self._reopen, rnd)

    def _reopen(self, rnd: Round) -> None:
        give_up = time.monotonic() + max(LEAF_RETRY_S, rnd.plan.deadline_unix - self.table.clock())
        try:
            retrying(functools.partial(self.open_shares, rnd), give_up, _unavailable)
        except FedstreamError as e:
            log.error("cannot reopen round %d of %s on the leaves: %s", rnd.plan.round, rnd.plan.run_id, e.public)
            self.follow(rnd)

    def follow(self, rnd: Round) -> None:
        """Follows each leaf's share in a worker thread (once per round)."""
        with rnd.lock:
            if rnd.watching:
                return
            rnd.watching = True
        for i in rnd.shares:
            background.spawn("leaf-watch", self._follow_leaf, rnd, i)

    def _follow_leaf(self, rnd: Round, index: int) -> None:
        """Counts the updates a leaf reports, until the root's round stops training."""
        leaf, plan = self.leaves[index], rnd.plan
        delay = 0.2
        while not self.table.closed:
            with rnd.lock:
                if rnd.state is not RoundState.TRAINING:
                    return
            try:
                events, cancel = leaf.watch(plan.run_id, plan.round)
            except FedstreamError:
                return  # shutting down
            with rnd.lock:
                rnd.cancels.append(cancel)
            try:
                for snap in events:
                    delay = 0.2
                    if not self._count_leaf_reports(rnd, snap.reports):
                        return
                    if snap.state is RoundState.FAILED:
                        log.warning("round %d of %s failed on leaf %s", plan.round, plan.run_id, leaf.endpoint)
                        return
            except FedstreamError as e:
                with rnd.lock:
                    if rnd.state is not RoundState.TRAINING or self.table.closed:
                        return  # the stream was ended on purpose
                log.warning("following round %d of %s on leaf %s: %s; retrying",
                            plan.round, plan.run_id, leaf.endpoint, e.public)
            finally:
                cancel()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _count_leaf_reports(self, rnd: Round, reports: list[UpdateReport]) -> bool:
        """Counts newly reported updates of a leaf in the root's round; False once the round
        no longer trains."""
        plan = rnd.plan
        with rnd.lock:
            if rnd.state is not RoundState.TRAINING:
                return False
            added = False
            for report in reports:
                agent = report.agent_id
                if agent in rnd.reports or agent not in plan.participants:
                    continue
                try:
                    self.journal.count(plan, report)
                except RoundNotOpen:
                    return False
                rnd.reports[agent] = report
                added = True
            complete = len(rnd.reports) >= plan.closes_at
        if added:
            rnd.notify()
        if complete:
            self._closer().close(rnd, closing_reason(plan, len(rnd.reports)))
        return True

    def collect(self, rnd: Round) -> None:
        """On a root: merges every leaf's sums into the round's accumulator; the reports of the
        sums received replace those counted while following the leaves. A leaf that cannot
        be reached for LEAF_RETRY_S, or that lost its share, is left out."""
        plan = rnd.plan
        assert rnd.layout is not None
        with contextlib.suppress(ModelNotFound):
            self.store.info(version_id(plan.run_id, plan.round))
            return  # committed before a restart; the finisher finds it
        accumulator = self.accumulators(rnd.layout)
        reports: dict[str, UpdateReport] = {}
        for i in sorted(rnd.shares):
            leaf = self.leaves[i]
            try:
                attempt = functools.partial(self._collect_leaf, leaf, rnd, accumulator, reports)
                retrying(attempt, time.monotonic() + LEAF_RETRY_S, _unavailable)
            except (Unavailable, RoundNotFound, FailedPrecondition) as e:
                log.error("round %d of %s: leaving out leaf %s: %s", plan.round, plan.run_id, leaf.endpoint, e.public)
        if len(reports) < plan.min_updates:
            raise FailedPrecondition(f"the leaves hold {len(reports)} updates, at least {plan.min_updates} needed")
        with rnd.lock:
            rnd.reports = reports
            rnd.accumulator = accumulator
        log.info("round %d of %s: %d updates collected from %d leaves", plan.round, plan.run_id, len(reports), len(rnd.shares))

    def _collect_leaf(
        self, leaf: LeafLink, rnd: Round, accumulator: WeightedAccumulator, into: dict[str, UpdateReport]
    ) -> None:
        """Receives one leaf's sums (verified chunk by chunk into a spool file) and merges them,
        and its reports to ``into``; nothing changes unless every byte arrived sound."""
        plan = rnd.plan
        expected = accumulator.sums_layout()
        layout, total_weight, reports, chunks = leaf.collect(
            plan.run_id, plan.round, max(60.0, expected.total_bytes / 10e6)
        )
        problem = layout.mismatch(expected)
        if problem:
            raise FailedPrecondition(f"leaf {leaf.endpoint} sent sums that do not fit the model: {problem}")
        foreign = [r.agent_id for r in reports if r.agent_id not in plan.participants]
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
        into.update((r.agent_id, r) for r in reports)

    def finish_leaves(self, rnd: Round) -> None:
        """Tells each leaf that the root finished the round (committed, or failed and why)."""
        for i in rnd.shares:
            try:
                self.leaves[i].finish(rnd.plan.run_id, rnd.plan.round, rnd.version, rnd.reason)
            except FedstreamError as e:
                log.warning("cannot finish round %d on leaf %s: %s", rnd.plan.round, self.leaves[i].endpoint, e.public)

    # On a leaf.

    def _partial(self, run_id: str, round_: int) -> Round:
        rnd = self.table.get(run_id, round_)
        if not rnd.plan.partial:
            raise FailedPrecondition(f"round {round_} of run {run_id!r} is not a share of a hierarchical round")
        return rnd

    def collect_partial(self, run_id: str, round_: int) -> tuple[Layout, float, list[UpdateReport], Iterator[Chunk]]:
        """On a leaf: stops the partial round taking updates and returns its sums' layout,
        total weight, reports and the sums as chunks. Repeatable until the round is finished.
        Raises RoundNotFound, or FailedPrecondition for a round that is not partial or is
        finished."""
        rnd = self._partial(run_id, round_)
        with rnd.lock:
            if rnd.terminal() or rnd.accumulator is None:
                raise FailedPrecondition(f"round {round_} of run {run_id!r} is {rnd.state} on this leaf")
            # The share keeps its deadline: it fails if the root never finishes it.
            moved = rnd.move(RoundState.AGGREGATING, keep_deadline=True)
            accumulator = rnd.accumulator
            reports = list(rnd.reports.values())
        if moved:
            self.journal.move(rnd.plan, RoundState.AGGREGATING)
            rnd.notify()
            log.info("round %d of %s: %d updates handed to the root", round_, run_id, len(reports))
        layout = accumulator.sums_layout()
        buffers = [a.view(np.uint8).data for a in accumulator.sums()]
        return layout, accumulator.total_weight, reports, iter_chunks(layout, buffers, self.chunk_bytes)

    def finish_partial(self, run_id: str, round_: int, version: str, reason: str) -> None:
        """On a leaf: the root finished the round (committed ``version``, or failed for
        ``reason``); frees the round's sums and kept updates. A share the root never collected
        is failed. Finishing a finished round is a no-op."""
        rnd = self._partial(run_id, round_)
        with rnd.lock:
            if rnd.terminal():
                return
            if version and rnd.state is RoundState.AGGREGATING:
                rnd.move(RoundState.COMMITTED, version=version)
            else:
                rnd.move(RoundState.FAILED, reason=reason or f"the root committed {version} without this share")
        if rnd.state is RoundState.COMMITTED:
            self.journal.move(rnd.plan, RoundState.COMMITTED, version=version)
        else:
            self.journal.move(rnd.plan, RoundState.FAILED, reason=rnd.reason)
        log.info("round %d of %s finished by the root: %s", round_, run_id, rnd.state)
        rnd.notify()
        self._closer().discard(rnd)
