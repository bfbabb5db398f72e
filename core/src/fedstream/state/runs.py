"""The runs-and-rounds role of the state store: what the scheduler drives."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

from fedstream.rounds import RoundState
from fedstream.state.records import RoundRecord, RunRecord


class RunStore(Protocol):
    """Runs of one tenant and their rounds. Every method is atomic on its own."""

    @abstractmethod
    def create_run(self, run: RunRecord) -> None:
        """Raises AlreadyExists when the id is taken."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """Raises RunNotFound."""

    @abstractmethod
    def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        """Sets fields of a run and returns it; raises RunNotFound."""

    @abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """All runs, oldest first."""

    @abstractmethod
    def create_round(self, rnd: RoundRecord) -> None:
        """Raises AlreadyExists when the run already has that round."""

    @abstractmethod
    def get_round(self, run_id: str, round_: int) -> RoundRecord:
        """Raises RoundNotFound."""

    @abstractmethod
    def list_rounds(self, run_id: str) -> list[RoundRecord]:
        """The run's rounds by number."""

    @abstractmethod
    def transition_round(self, run_id: str, round_: int, to: RoundState, **changes: Any) -> RoundRecord:
        """Moves a round to state ``to`` and sets ``changes``, atomically.

        Raises RoundNotFound, or InvalidTransition when ``to`` is not reachable from the round's
        current state (``RoundState.can_move_to``; so of two racing callers, exactly one wins).
        """

    @abstractmethod
    def update_round(self, run_id: str, round_: int, **changes: Any) -> RoundRecord:
        """Sets fields of a round other than its state (progress); raises RoundNotFound, or
        InvalidTransition when ``changes`` names the state."""
