"""Rebuilding unfinished rounds from the journal after a restart: each counted update is read
back from the model store and folded again, so the accumulator is the one the lost process had."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from fedstream.errors import FailedPrecondition, FedstreamError
from fedstream.rounds import RoundKind, RoundState, UpdateReport
from fedstream.state import AggregationRecord
from fedstream.strategies import make_strategy
from fedstream_aggregator.blocks import Blocks
from fedstream_aggregator.commit import Committer
from fedstream_aggregator.hierarchy import Hierarchy
from fedstream_aggregator.journal import Journal
from fedstream_aggregator.rounds import Round, RoundTable, closing_reason

if TYPE_CHECKING:
    from fedstream_aggregator.opening import RoundFactory

log = logging.getLogger(__name__)

SECURE_RESTART = "aggregator restarted during secure aggregation"


class Recovery:
    """Restores the rounds of this aggregator's journal."""

    def __init__(
        self, table: RoundTable, journal: Journal, factory: RoundFactory, hierarchy: Hierarchy, committer: Committer
    ) -> None:
        self.table = table
        self.journal = journal
        self.factory = factory
        self.hierarchy = hierarchy
        self.committer = committer

    def recover(self) -> int:
        """Rebuilds every round the journal has unfinished (after a restart); returns how many.

        A round whose updates were not kept (``durable=False``) cannot be rebuilt and is failed.
        """
        recovered = 0
        for record in self.journal.unfinished():
            if self.table.find(record.run_id, record.round) is not None:
                continue
            if record.plan.secure_aggregation is not None and record.plan.kind is RoundKind.TRAIN:
                # The protocol's keys and masked sum were in the lost process's memory only.
                with contextlib.suppress(FedstreamError):
                    self.journal.fail(record.run_id, record.round, SECURE_RESTART)
                continue
            try:
                self.restore(record)
                recovered += 1
            except FedstreamError as e:
                log.error("cannot recover round %d of %s: %s", record.round, record.run_id, e.public)
                with contextlib.suppress(FedstreamError):
                    self.journal.fail(record.run_id, record.round, f"lost in a restart: {e.public}")
        return recovered

    def restore(self, record: AggregationRecord) -> None:
        """Rebuilds one round from its record and takes it on from its state; raises
        FailedPrecondition when its counted updates were not kept."""
        plan = record.plan
        if self.table.find(plan.run_id, plan.round) is not None:
            return
        if plan.secure_aggregation is not None and plan.kind is RoundKind.TRAIN:
            raise FailedPrecondition(SECURE_RESTART)
        strategy = make_strategy(plan.strategy, plan.params())
        rnd = self.factory.build(plan, strategy, self.factory.base_layout(plan))
        reports = dict(record.reports)
        # Init rounds and linear folds need the counted updates' bytes again; robust rounds
        # read theirs at commit, leaves hold a root's, evaluation rounds have none.
        refold = plan.kind is RoundKind.INIT or (plan.kind is RoundKind.TRAIN and rnd.accumulator is not None)
        if reports and refold and not rnd.keeps_updates:
            raise FailedPrecondition("its counted updates were not kept (durable updates are off)")
        if refold:
            self._refold(rnd, reports)
        rnd.state, rnd.reports = record.state, reports
        if not self.table.install(rnd):
            return
        log.info(
            "round %d of %s recovered: %s, %d of %d updates counted",
            plan.round, plan.run_id, rnd.state, len(reports), len(plan.participants),
        )
        if plan.partial:
            return  # the root collects it
        if rnd.state is RoundState.AGGREGATING:
            self.committer.commit_later(rnd)
        elif plan.buffer is not None:
            if len(reports) >= plan.buffer.buffer_size:
                self.committer.close(rnd, "the buffer is full")
        elif len(reports) >= plan.closes_at:  # it had what it needed when the process died
            self.committer.close(rnd, closing_reason(plan, len(reports)))
        elif rnd.shares:
            self.hierarchy.reopen_later(rnd)

    def _refold(self, rnd: Round, reports: dict[str, UpdateReport]) -> None:
        """Folds every kept update again (an init round's gives the layout)."""
        store = self.factory.storage.store
        for agent, report in reports.items():
            with store.open_update(rnd.plan.run_id, rnd.plan.round, agent) as reader:
                if rnd.accumulator is not None:
                    rnd.accumulator.fold(Blocks(reader).read_into, report.weight, rnd.wire)
                else:
                    rnd.layout = reader.layout
