"""The aggregator's journal in the state store: each round's record embeds its plan and its
counted reports, so a restarted aggregator takes the round on as it was."""

from __future__ import annotations

import logging

from fedstream.errors import FedstreamError
from fedstream.rounds import RoundPlan, RoundState, UpdateReport
from fedstream.state import AggregationRecord, StateStore

log = logging.getLogger(__name__)


class Journal:
    """This aggregator's records (``name``: "" for a single or root aggregator, "leaf/<name>"
    for a leaf), so that aggregators sharing one state store never share a record."""

    def __init__(self, state: StateStore, name: str) -> None:
        self.state = state
        self.name = name

    def create(self, plan: RoundPlan) -> None:
        """Raises AlreadyExists when the round has a record in this journal."""
        self.state.create_aggregation(AggregationRecord(plan, journal=self.name))

    def get(self, run_id: str, round_: int) -> AggregationRecord:
        """Raises RoundNotFound."""
        return self.state.get_aggregation(run_id, round_, self.name)

    def unfinished(self) -> list[AggregationRecord]:
        return self.state.list_aggregations(self.name)

    def count(self, plan: RoundPlan, report: UpdateReport, *, key: str = "") -> bool:
        """Counts an update, atomically; False when the agent's (``key``'s: a buffered
        asynchronous update's) was counted already. Raises RoundNotOpen once the record is past
        training."""
        return self.state.count_update(plan.run_id, plan.round, key or report.agent_id, report, self.name)

    def move(self, plan: RoundPlan, state: RoundState, *, version: str = "", reason: str = "") -> None:
        """Moves the record to ``state`` (with the version committed or the reason it failed);
        a store that refuses is logged, not raised: the round's outcome stands."""
        changes = {k: v for k, v in (("version", version), ("reason", reason)) if v}
        try:
            self.state.set_aggregation_state(plan.run_id, plan.round, state, self.name, **changes)
        except FedstreamError as e:
            log.warning("journal of round %d of %s: %s", plan.round, plan.run_id, e.public)

    def fail(self, run_id: str, round_: int, reason: str) -> None:
        """Fails a record; raises what the store raises."""
        self.state.set_aggregation_state(run_id, round_, RoundState.FAILED, self.name, reason=reason)

    def cancel(self, run_id: str, round_: int, reason: str) -> AggregationRecord:
        """Cancels a record; raises what the store raises (InvalidTransition once it ended)."""
        return self.state.set_aggregation_state(run_id, round_, RoundState.CANCELLED, self.name, reason=reason)
