"""Run leadership: which replica drives a run, held as a renewed lease in the state store."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from fedstream.errors import FedstreamError
from fedstream.state import StateStore

log = logging.getLogger(__name__)


class RunLeases:
    """This replica's leases on the runs it drives. A lease lapses ``ttl_s`` after its last
    renewal, so that a surviving replica adopts the runs of one that died."""

    def __init__(self, state: StateStore, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.ttl_s = ttl_s
        self.clock = clock
        # This replica's name on the leases of the runs it drives.
        self.holder = f"scheduler-{uuid.uuid4().hex[:12]}"

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @staticmethod
    def name(run_id: str) -> str:
        return f"run:{run_id}"

    def try_lead(self, run_id: str) -> bool:
        """Takes or renews this replica's lease on driving a run; False when another holds it."""
        return self.state.acquire_lease(self.name(run_id), self.holder, self.ttl_s, self.clock())

    async def keep(self, run_id: str, driver: asyncio.Task[None]) -> None:
        """Renews the lease while ``driver`` runs; cancels it once another replica holds it."""
        while not driver.done():
            await asyncio.sleep(self.renew_every_s)
            try:
                held = self.try_lead(run_id)
            except FedstreamError as e:
                log.warning("run %s: cannot renew its lease: %s", run_id, e.public)
                continue
            if not held:
                log.warning("run %s: another replica drives it now; stopping here", run_id)
                driver.cancel()
                return
