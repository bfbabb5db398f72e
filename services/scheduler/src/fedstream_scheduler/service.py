"""The scheduler of one tenant, independent of gRPC: its agent registry, its runs and the
round driver between them, wired over one state store and the aggregator's round control.

A run is a sequence of rounds driven by one asyncio task: wait for enough live agents, select
participants, open the round on the aggregator, send assignments on the agents' open streams,
then follow the aggregator until the round is committed or failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fedstream.state import StateStore
from fedstream_scheduler.agents import AgentRegistry
from fedstream_scheduler.audit import Auditor
from fedstream_scheduler.changes import Changes
from fedstream_scheduler.leases import RunLeases
from fedstream_scheduler.round_control import RoundControl
from fedstream_scheduler.round_driver import RoundDriver
from fedstream_scheduler.runs import RunService
from fedstream_scheduler.settings import SchedulerSettings


class SchedulerService:
    """The transport-neutral services that the gRPC servicers and the REST API call:
    ``agents`` (registry and assignment streams), ``runs`` (runs and their driving) and
    ``audit`` (the record of operator actions)."""

    def __init__(
        self,
        state: StateStore,
        aggregator: RoundControl,
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.aggregator = aggregator
        self.settings = settings
        self.clock = clock
        self.agents = AgentRegistry(state, settings, clock)
        self.leases = RunLeases(state, settings.run_lease_ttl_s, clock)
        changes = Changes()
        rounds = RoundDriver(state, aggregator, self.agents, changes, settings, clock)
        self.audit = Auditor(state, clock)
        self.runs = RunService(state, rounds, self.leases, changes, settings, clock, self.audit)

    @property
    def instance_id(self) -> str:
        """This replica's name on the leases it holds."""
        return self.leases.holder

    def start_adopting(self) -> None:
        """Starts driving the runs whose lease lapsed (see RunService.adopt_runs)."""
        self.runs.start_adopting()

    async def close(self) -> None:
        """Stops driving runs and ends the agents' streams."""
        await self.runs.close()
        self.agents.close_streams()
