"""Buffered asynchronous runs (FedBuff): each version is one buffer, a round on the aggregator
that commits after ``buffer_size`` updates, whoever sends them. Up to ``concurrency`` agents
train at once; each works from the newest version when it is assigned and uploads its change
from it; once its update is counted (or its assignment's deadline passed) the agent is assigned
again from the newest version. An agent has at most one update per buffer it was assigned in,
the identity under which the aggregator counts it once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

from fedstream.errors import FedstreamError, RoundNotFound
from fedstream.rounds import (
    TERMINAL_ROUND_STATES,
    Assignment,
    RoundKind,
    RoundSnapshot,
    RoundState,
    TrainingConfig,
)
from fedstream.state import RoundRecord
from fedstream.strategies import make_strategy
from fedstream_scheduler import metrics as m
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.round_driver import UNREACHABLE_GRACE_S, RoundDriver

log = logging.getLogger(__name__)

# How often a buffer's free seats are offered to idle live agents besides each snapshot.
ASSIGN_EVERY_S = 1.0


@dataclass
class Work:
    """The agents of one asynchronous run training now: agent -> (round assigned in, deadline)."""

    busy: dict[str, tuple[int, float]] = field(default_factory=dict)
    # The round each agent was last assigned in (an agent has one update per round at most).
    last: dict[str, int] = field(default_factory=dict)


class BufferedDriver:
    """Drives the buffers of asynchronous runs through the round driver's recording."""

    def __init__(self, rounds: RoundDriver) -> None:
        self.rounds = rounds
        self.state = rounds.state
        self.agents = rounds.agents
        self.clock = rounds.clock
        self._work: dict[str, Work] = {}

    async def run_buffer(self, run_id: str, spec: RunSpec, round_no: int, base: str) -> str:
        """Opens buffer ``round_no`` from ``base`` (or takes an unfinished one on again) and
        keeps agents training into it until it ends; returns its version, "" when it failed."""
        try:
            rec = self.state.get_round(run_id, round_no)
        except RoundNotFound:
            rec = await self._record(run_id, spec, round_no, base)
        if rec.state in TERMINAL_ROUND_STATES:
            return rec.version if rec.state == RoundState.COMMITTED else ""
        assert spec.asynchronous is not None
        plan = dataclasses.replace(self.rounds.plan(spec, rec), buffer=spec.asynchronous.buffer())
        loop = asyncio.get_running_loop()
        try:
            await self.rounds.aggregator.open_round(plan, loop.time() + max(5.0, rec.deadline_unix - self.clock()))
        except FedstreamError as e:
            return await self.rounds.round_failed(run_id, rec.round, f"aggregator refused the buffer: {e.public}")
        if rec.state == RoundState.OPEN:
            self.state.transition_round(run_id, rec.round, RoundState.TRAINING)
            await self.rounds.changes.notify()
        work = self._work.setdefault(run_id, Work())
        for report in rec.reports:  # taken on again (another replica drove it): those counted are done
            assigned = rec.round - int(report.metrics.get("staleness", 0))
            work.last[report.agent_id] = max(work.last.get(report.agent_id, -1), assigned)
        self._assign(run_id, spec, rec, work)
        # Agents that connect while nothing counts (all of them, after this replica took the
        # run over from a dead one) are given free seats without waiting for a snapshot.
        ticker = asyncio.create_task(self._keep_assigning(run_id, spec, rec, work))
        try:
            return await self._follow(run_id, spec, rec, work)
        finally:
            ticker.cancel()

    async def _keep_assigning(self, run_id: str, spec: RunSpec, rec: RoundRecord, work: Work) -> None:
        while True:
            await asyncio.sleep(ASSIGN_EVERY_S)
            self._assign(run_id, spec, rec, work)

    async def _record(self, run_id: str, spec: RunSpec, round_no: int, base: str) -> RoundRecord:
        live = await self.rounds._wait_for_agents(spec)
        # Every enabled agent of the task may upload into the buffer, not only those connected
        # now: one that drops out and comes back (or connects late) takes part in it.
        participants = sorted(set(live) | set(self.agents.eligible_agents(spec.task)))
        now = self.clock()
        rec = RoundRecord(
            run_id, round_no, RoundKind.TRAIN, RoundState.OPEN, participants, base, started_unix=now,
            deadline_unix=now + spec.round_timeout_s, min_updates=1,
        )
        self.state.create_round(rec)
        fed = self.state.get_run(run_id).federation or "none"
        m.ROUNDS_STARTED.labels(self.state.tenant, fed, RoundKind.TRAIN).inc()
        await self.rounds.changes.notify()
        return rec

    def _assign(self, run_id: str, spec: RunSpec, rec: RoundRecord, work: Work) -> None:
        """Assigns buffer ``rec`` to idle participants until ``concurrency`` train at once."""
        assert spec.asynchronous is not None
        now = self.clock()
        for agent, (_, deadline) in list(work.busy.items()):
            if now > deadline:  # never reported in time: free to work again
                del work.busy[agent]
        live = set(self.agents.live_agents(spec.task))
        idle = [a for a in rec.participants if a in live and a not in work.busy and work.last.get(a, -1) < rec.round]
        free = spec.asynchronous.concurrency - len(work.busy)
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        training = TrainingConfig(**spec.training.model_dump(), **strategy.configure(), upload_delta=True)
        for agent in idle[: max(0, free)]:
            deadline = now + spec.round_timeout_s
            assignment = Assignment(
                run_id=run_id, round=rec.round, kind=RoundKind.TRAIN, task=spec.task, base_version=rec.base_version,
                model_endpoint=self.rounds.public_endpoint, upload_endpoint=self.rounds.public_endpoint,
                training=training, deadline_unix=deadline,
            )
            work.busy[agent] = (rec.round, deadline)
            work.last[agent] = rec.round
            self.agents.publish((f"{run_id}#{agent}", rec.round), {agent: assignment})
            log.info("buffer %d: %s assigned from %s", rec.round, agent, rec.base_version)

    def _counted(self, run_id: str, snap: RoundSnapshot, work: Work) -> None:
        """Frees the agents whose update the snapshot shows counted."""
        for report in snap.reports:
            assigned = snap.round - int(report.metrics.get("staleness", 0))
            held = work.busy.get(report.agent_id)
            if held is not None and held[0] == assigned:
                del work.busy[report.agent_id]
                self.agents.withdraw((f"{run_id}#{report.agent_id}", assigned))

    async def _follow(self, run_id: str, spec: RunSpec, rec: RoundRecord, work: Work) -> str:
        """Records the buffer's snapshots until it ends, assigning agents as updates count."""
        delay = 0.2
        while True:
            stream = self.rounds.aggregator.watch_round(run_id, rec.round)
            try:
                async for snap in stream:
                    self._counted(run_id, snap, work)
                    ended = await self.rounds.record(run_id, rec.round, snap)
                    if ended is not None:
                        return ended
                    self._assign(run_id, spec, rec, work)
            except FedstreamError as e:
                if isinstance(e, RoundNotFound):
                    return await self.rounds.round_failed(run_id, rec.round, "the aggregator lost the buffer")
                if self.clock() > rec.deadline_unix + UNREACHABLE_GRACE_S:
                    return await self.rounds.round_failed(run_id, rec.round, f"aggregator unreachable ({e.detail})")
                log.warning("lost the aggregator's buffer stream (%s); reconnecting", e.detail)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                await stream.aclose()

    def forget(self, run_id: str) -> None:
        """Drops what the run's agents were doing (the run ended)."""
        work = self._work.pop(run_id, None)
        if work is not None:
            for agent, (assigned, _) in work.busy.items():
                self.agents.withdraw((f"{run_id}#{agent}", assigned))
