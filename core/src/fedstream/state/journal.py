"""The aggregation journal role of the state store: each round's plan and counted updates,
kept by the aggregator so that a restarted one can finish the round."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

from fedstream.rounds import RoundState, UpdateReport
from fedstream.state.records import AggregationRecord


class AggregationJournal(Protocol):
    """One record per round and journal.

    Every method works within one journal (``journal``, "" by default, for a single or root
    aggregator; "leaf/<name>" for a leaf): records of different journals never collide, and
    each lists only its own.
    """

    @abstractmethod
    def create_aggregation(self, rec: AggregationRecord) -> None:
        """Raises AlreadyExists when the round has one in ``rec.journal``.

        Records are stored in ``AggregationRecord.to_dict``'s form and read with its
        ``from_dict``, which also reads records stored before the plan was embedded."""

    @abstractmethod
    def get_aggregation(self, run_id: str, round_: int, journal: str = "") -> AggregationRecord:
        """Raises RoundNotFound."""

    @abstractmethod
    def list_aggregations(self, journal: str = "") -> list[AggregationRecord]:
        """Every record of the journal that has not ended (committed, failed or cancelled)."""

    @abstractmethod
    def count_update(
        self, run_id: str, round_: int, agent_id: str, report: UpdateReport, journal: str = ""
    ) -> bool:
        """Adds an agent's update to a training round's journal, atomically; True when added,
        False when that agent's update was counted already. Raises RoundNotFound, or RoundNotOpen
        when the journal is past training."""

    @abstractmethod
    def set_aggregation_state(
        self, run_id: str, round_: int, state: RoundState, journal: str = "", **changes: Any
    ) -> AggregationRecord:
        """Moves a journal to aggregating, committed, failed or cancelled (never back, as
        ``RoundState.can_move_to`` allows) and sets ``changes`` (the record's own fields:
        version, reason); raises RoundNotFound or InvalidTransition."""
