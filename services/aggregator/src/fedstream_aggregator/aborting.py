"""Aborting rounds whose run was cancelled: the round stops taking updates and commits nothing,
here or, for a round this process holds only in its journal, there."""

from __future__ import annotations

import logging

from fedstream.errors import InvalidArgument, InvalidTransition, Unavailable
from fedstream.rounds import RoundSnapshot
from fedstream_aggregator.commit import Committer
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.rounds import RoundTable

log = logging.getLogger(__name__)

# How long an abort that came while the round's result was being made visible waits for it.
SEALED_WAIT_S = 60.0
MAX_REASON_LENGTH = 500


class Aborter:
    """Cancels the rounds of ``table`` (and of its journal) on request of the scheduler."""

    def __init__(self, table: RoundTable, journal: Journal, committer: Committer) -> None:
        self.table = table
        self.journal = journal
        self.committer = committer

    def abort(self, run_id: str, round_: int, reason: str) -> RoundSnapshot:
        """Cancels the round unless it has ended; returns it afterwards: cancelled, or committed
        or failed when it had ended first (an abort that comes while the result is being made
        visible waits for it). Aborting a cancelled round again is a no-op.

        Raises Unavailable while the aggregator is starting, RoundNotFound for a round neither
        held nor journaled here, InvalidArgument for a reason over 500 characters."""
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidArgument(f"the reason has {len(reason)} characters; at most {MAX_REASON_LENGTH}")
        if not self.table.ready:
            raise Unavailable("the aggregator is starting; retry shortly")
        rnd = self.table.find(run_id, round_)
        if rnd is None:
            return self._abort_journaled(run_id, round_, reason)
        self.committer.abort(rnd, reason)
        with rnd.changed:
            if rnd.sealed:
                rnd.changed.wait_for(rnd.terminal, timeout=SEALED_WAIT_S)
            return rnd.snapshot()

    def _abort_journaled(self, run_id: str, round_: int, reason: str) -> RoundSnapshot:
        """A round this process does not hold: its journal record, cancelled unless it ended."""
        record = self.journal.get(run_id, round_)  # RoundNotFound
        if not record.state.terminal:
            try:
                record = self.journal.cancel(run_id, round_, reason)
            except InvalidTransition:
                record = self.journal.get(run_id, round_)
            else:
                log.info("round %d of %s cancelled (journal only): %s", round_, run_id, reason)
        return RoundSnapshot(
            run_id, round_, record.state, list(record.reports.values()), [], record.version, record.reason,
        )

