"""Wakes the watchers of runs when a run or one of its rounds changes on this replica."""

from __future__ import annotations

import asyncio


class Changes:
    """A condition that run watchers wait on and the run driver notifies."""

    def __init__(self) -> None:
        self.condition = asyncio.Condition()

    async def notify(self) -> None:
        async with self.condition:
            self.condition.notify_all()
