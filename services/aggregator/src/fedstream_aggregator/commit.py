"""How a round ends: closed (all reported, or its deadline passed with enough updates) and
committed by its finisher in a worker thread, or failed; then its kept updates are freed."""

from __future__ import annotations

import logging
import time

from fedstream.errors import FedstreamError, RoundCancelled
from fedstream.memtune import release_free_memory
from fedstream.rounds import RoundKind, RoundState, RunState
from fedstream.store import ModelStore
from fedstream_aggregator import background
from fedstream_aggregator import metrics as m
from fedstream_aggregator.finishers import Result
from fedstream_aggregator.hierarchy import Hierarchy
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.rounds import Round
from fedstream_aggregator.spool import SpoolPool

log = logging.getLogger(__name__)


class Committer:
    """Closes, commits and fails rounds; ``keep_last`` > 0 applies the run's retention after
    each commit."""

    def __init__(
        self, journal: Journal, store: ModelStore, spools: SpoolPool, hierarchy: Hierarchy,
        *, tenant: str, keep_last: int = 0,
    ) -> None:
        self.journal = journal
        self.store = store
        self.spools = spools
        self.hierarchy = hierarchy
        self.tenant = tenant
        self.keep_last = keep_last

    def on_deadline(self, rnd: Round) -> None:
        """A round's deadline passed: it closes with enough updates, fails without. A leaf's
        share fails: its root never finished it."""
        if rnd.plan.partial:
            self.fail(rnd, "the root aggregator never finished this share of the round")
            return
        with rnd.lock:
            if rnd.state is not RoundState.TRAINING:
                return
            n = len(rnd.reports)
        total, needed = len(rnd.plan.participants), rnd.plan.min_updates
        if n >= needed:
            self.close(rnd, f"deadline passed with {n} of {total} updates")
        else:
            self.fail(rnd, f"deadline passed with {n} of {total} updates, at least {needed} needed")

    def fail(self, rnd: Round, reason: str) -> None:
        """Fails a round that is not finished yet."""
        with rnd.lock:
            if rnd.terminal() or not rnd.move(RoundState.FAILED, reason=reason):
                return
        rnd.stop_following()
        self.journal.move(rnd.plan, RoundState.FAILED, reason=reason)
        log.warning("round %d of %s failed: %s", rnd.plan.round, rnd.plan.run_id, reason)
        rnd.notify()
        self.discard(rnd)
        release_free_memory()

    def abort(self, rnd: Round, reason: str) -> None:
        """Cancels a round that has not committed (its run was cancelled): uploads streaming
        are ended, later ones refused, and nothing of it is committed. A round whose result is
        being made visible (sealed) commits: the abort came too late. A commit in progress
        notices the cancel and frees what the round holds."""
        with rnd.lock:
            if rnd.terminal() or rnd.sealed or not rnd.move(RoundState.CANCELLED, reason=reason):
                return
            committing = rnd.committing
        rnd.stop_following()
        self.journal.move(rnd.plan, RoundState.CANCELLED, reason=reason)
        log.info("round %d of %s cancelled: %s", rnd.plan.round, rnd.plan.run_id, reason)
        rnd.notify()
        if not committing:
            self.discard(rnd)
            release_free_memory()

    def run_cancelled(self, run_id: str) -> str:
        """Why the run was cancelled, per the state store; "" when it was not, or when the store
        does not know the run (a scheduler with a state store of its own) or cannot say."""
        try:
            run = self.journal.state.get_run(run_id)
        except FedstreamError:
            return ""
        if run.state != RunState.CANCELLED:
            return ""
        return run.reason or "cancelled"

    def close(self, rnd: Round, why: str) -> None:
        """Moves the round to aggregating (once) and commits it in a worker thread."""
        with rnd.lock:
            if rnd.state is not RoundState.TRAINING:
                return
            rnd.move(RoundState.AGGREGATING)
        rnd.stop_following()
        self.journal.move(rnd.plan, RoundState.AGGREGATING)
        log.info("round %d of %s aggregating: %s", rnd.plan.round, rnd.plan.run_id, why)
        rnd.notify()
        self.commit_later(rnd)

    def commit_later(self, rnd: Round) -> None:
        """Commits an aggregating round in a worker thread."""
        background.spawn("commit", self.commit, rnd)

    def commit(self, rnd: Round) -> None:
        """Commits an aggregating round (measured)."""
        started = time.perf_counter()
        with rnd.lock:
            rnd.committing = True
        try:
            self._commit(rnd)
        finally:
            with rnd.lock:
                rnd.committing = False
                cancelled = rnd.state is RoundState.CANCELLED
            if cancelled:
                self.discard(rnd)
            outcome = rnd.state.value if rnd.state.terminal else "unknown"
            m.COMMITS.labels(self.tenant, rnd.plan.kind.value, outcome).inc()
            if rnd.state is RoundState.COMMITTED:
                m.AGGREGATION_SECONDS.labels(self.tenant, rnd.strategy.name).observe(time.perf_counter() - started)
            # The round's sums and buffers are freed now: give their memory back.
            release_free_memory()

    def _commit(self, rnd: Round) -> None:
        plan = rnd.plan
        if rnd.state is not RoundState.AGGREGATING:  # aborted before its commit started
            return
        reason = rnd.run_cancelled()
        if reason:  # cancelled while the abort did not reach this aggregator
            self._cancel_committing(rnd, f"the run was cancelled: {reason}")
            return
        try:
            if rnd.shares:
                self.hierarchy.collect(rnd)
            result = rnd.finisher.finish(rnd)
        except RoundCancelled as e:
            self._cancel_committing(rnd, e.public)
            return
        except FedstreamError as e:
            if not self._aborted(rnd):
                self._fail_aggregating(rnd, f"{rnd.finisher.failure}: {e.public}")
            return
        except Exception as e:
            if not self._aborted(rnd):
                log.exception("commit of round %d of %s failed", plan.round, plan.run_id)
                self._fail_aggregating(rnd, f"commit failed: {type(e).__name__}")
            return
        self._committed(rnd, result)

    @staticmethod
    def _aborted(rnd: Round) -> bool:
        """Whether the round was aborted while its commit ran (the commit then fails on the
        parts the abort took away: that is no failure of the round)."""
        if rnd.state is not RoundState.CANCELLED:
            return False
        log.info("round %d of %s: the commit stopped, the round was cancelled", rnd.plan.round, rnd.plan.run_id)
        return True

    def _cancel_committing(self, rnd: Round, reason: str) -> None:
        """Cancels a round that its commit found cancelled (a no-op when it was aborted)."""
        with rnd.lock:
            moved = rnd.move(RoundState.CANCELLED, reason=reason)
        if moved:
            rnd.stop_following()
            self.journal.move(rnd.plan, RoundState.CANCELLED, reason=reason)
            log.info("round %d of %s cancelled: %s", rnd.plan.round, rnd.plan.run_id, reason)
            rnd.notify()

    def _committed(self, rnd: Round, result: Result) -> None:
        plan = rnd.plan
        self.journal.move(plan, RoundState.COMMITTED, version=result.version)
        # Freed before the commit is visible: a watcher that sees it finds the updates gone.
        with rnd.lock:
            rnd.version = result.version
        self.discard(rnd)
        with rnd.lock:
            rnd.move(RoundState.COMMITTED, version=result.version)
            rnd.metrics = dict(result.metrics)
        log.info("round %d of %s committed as %s", plan.round, plan.run_id, result.version)
        rnd.notify()
        if self.keep_last and plan.kind is not RoundKind.EVALUATE:
            # An asynchronous run keeps the bases its agents may still be training from.
            keep = max(self.keep_last, plan.buffer.max_staleness + 1) if plan.buffer is not None else self.keep_last
            self._apply_retention(plan.run_id, keep)

    def _apply_retention(self, run_id: str, keep: int) -> None:
        try:
            deleted = self.store.apply_retention(run_id, keep)
        except FedstreamError as e:
            log.warning("retention of run %s failed: %s", run_id, e.public)
        else:
            if deleted:
                log.info("retention removed %s", ", ".join(deleted))

    def _fail_aggregating(self, rnd: Round, reason: str) -> None:
        with rnd.lock:
            rnd.move(RoundState.FAILED, reason=reason)
        self.journal.move(rnd.plan, RoundState.FAILED, reason=reason)
        log.error("round %d of %s failed: %s", rnd.plan.round, rnd.plan.run_id, reason)
        rnd.notify()
        self.discard(rnd)

    def discard(self, rnd: Round) -> None:
        """Frees what a finished round holds: its leaves' shares, its spool, its kept updates."""
        self.hierarchy.finish_leaves(rnd)
        if rnd.init_spool is not None:
            self.spools.release(rnd.init_spool)
            rnd.init_spool = None
        if rnd.keeps_updates:
            try:
                self.store.delete_updates(rnd.plan.run_id, rnd.plan.round)
            except FedstreamError as e:
                log.warning("cannot delete the kept updates of round %d: %s", rnd.plan.round, e.public)
