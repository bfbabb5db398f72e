"""Cancelling runs: the cancel is recorded first, then each unfinished round of the run is
abandoned on the aggregator (AbortRound) and recorded as the aggregator answers.

A cancel whose aborts did not all get through (the aggregator unreachable, or this replica
dying in between) leaves those rounds unfinished in the records; ``retry_aborts`` (called by
every replica's adopter) sends them again. An aggregator sharing the state store also reads the
run's state before it commits, so a round of a cancelled run never commits there either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fedstream.errors import FedstreamError, RoundNotFound
from fedstream.rounds import TERMINAL_ROUND_STATES, RoundSnapshot, RoundState, RunState
from fedstream.state import RoundRecord, RunRecord, StateStore
from fedstream_scheduler.round_control import RoundControl
from fedstream_scheduler.round_driver import RoundDriver

log = logging.getLogger(__name__)

# How long a cancel tries to reach an unreachable aggregator before leaving it to the retries.
ABORT_GIVE_UP_S = 10.0
# Cancelled runs whose aborts are retried: those cancelled this recently.
RETRY_WINDOW_S = 7 * 24 * 3600.0
# The once-only marks of runs whose every round has ended since their cancel.
ABORTED_SCOPE = "run-aborted"


class Canceller:
    """Abandons the unfinished rounds of cancelled runs on the aggregator."""

    def __init__(
        self, state: StateStore, aggregator: RoundControl, rounds: RoundDriver, clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.aggregator = aggregator
        self.rounds = rounds
        self.clock = clock

    async def abort_rounds(self, run_id: str, reason: str) -> bool:
        """Aborts every unfinished round of the run and records each as the aggregator answers
        (cancelled, or committed or failed when it ended first); True when none is left
        unfinished (the run is then marked done)."""
        left = 0
        for rec in self.state.list_rounds(run_id):
            if rec.state not in TERMINAL_ROUND_STATES and not await self._abort(rec, reason):
                left += 1
        if not left:
            self.state.mark_once(ABORTED_SCOPE, run_id)
        return not left

    async def _abort(self, rec: RoundRecord, reason: str) -> bool:
        """Aborts one round; False when the aggregator could not be told (it is retried)."""
        give_up_at = asyncio.get_running_loop().time() + ABORT_GIVE_UP_S
        try:
            snap = await self.aggregator.abort_round(rec.run_id, rec.round, reason, give_up_at)
        except RoundNotFound:  # never opened there, or long forgotten: nothing to stop
            snap = RoundSnapshot(rec.run_id, rec.round, RoundState.CANCELLED, [], [], "", reason)
        except FedstreamError as e:
            log.warning("run %s: the aggregator was not told round %d is cancelled (%s); retrying later",
                        rec.run_id, rec.round, e.detail or e.public)
            return False
        if not snap.state.terminal:
            return False  # a commit that outlasted the wait: asked again later
        # The answer carries no reports: the round keeps those recorded.
        snap = RoundSnapshot(rec.run_id, rec.round, snap.state, list(rec.reports), [], snap.version, snap.reason or reason)
        try:
            await self.rounds.record(rec.run_id, rec.round, snap)
        except FedstreamError as e:
            log.warning("run %s: cannot record round %d as %s: %s", rec.run_id, rec.round, snap.state, e.public)
            return False
        return True

    async def retry_aborts(self, runs: list[RunRecord]) -> None:
        """Sends again the aborts of recently cancelled runs that still have unfinished rounds."""
        since = self.clock() - RETRY_WINDOW_S
        for run in runs:
            if run.state != RunState.CANCELLED or run.finished_unix < since:
                continue
            if self.state.is_marked(ABORTED_SCOPE, run.run_id):
                continue
            if await self.abort_rounds(run.run_id, run.reason or "run cancelled"):
                log.info("run %s: its unfinished rounds are cancelled on the aggregator", run.run_id)
