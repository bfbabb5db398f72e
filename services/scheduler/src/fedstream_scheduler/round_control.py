"""How the run driver reaches the aggregator: a transport-neutral interface over domain types."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from fedstream.rounds import RoundPlan, RoundSnapshot


class RoundControl(Protocol):
    """Opens rounds on the aggregator and follows them.

    Failures are errors of ``fedstream.errors``: RoundNotFound when the aggregator does not
    know the round; another FedstreamError (its ``detail`` the transport's status name, e.g.
    ``UNAVAILABLE``) when the aggregator refuses or cannot be reached.
    """

    async def open_round(self, plan: RoundPlan, give_up_at: float) -> dict[str, str]:
        """Opens the round (opening the same plan again is harmless), retrying while the
        aggregator is unreachable until the event loop's clock passes ``give_up_at``; returns
        the participants that the aggregator sends elsewhere (to its leaves), with where."""
        ...

    async def abort_round(self, run_id: str, round_: int, reason: str, give_up_at: float) -> RoundSnapshot:
        """Cancels the round on the aggregator (its run was cancelled), retrying while the
        aggregator is unreachable until the event loop's clock passes ``give_up_at``; returns
        the round afterwards: cancelled, or committed or failed when it had ended first.
        Raises RoundNotFound when the aggregator neither holds nor journaled the round."""
        ...

    def watch_round(self, run_id: str, round_: int) -> AsyncGenerator[RoundSnapshot, None]:
        """The round now and after each change, until the stream ends or breaks."""
        ...

    async def close(self) -> None: ...
