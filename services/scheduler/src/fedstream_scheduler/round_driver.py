"""Drives one round of a run: waits for agents, selects participants, opens the round on the
aggregator (through RoundControl), assigns it to the participants and follows it to its end."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from fedstream.errors import FedstreamError, InvalidTransition, RoundNotFound
from fedstream.rounds import (
    TERMINAL_ROUND_STATES,
    Assignment,
    RoundKind,
    RoundPlan,
    RoundSnapshot,
    RoundState,
    TrainingConfig,
    UpdateReport,
    canonical_params,
)
from fedstream.state import RoundRecord, RunRecord, StateStore
from fedstream.strategies import LinearStrategy, make_strategy
from fedstream_scheduler import metrics as m
from fedstream_scheduler.agents import AgentRegistry
from fedstream_scheduler.changes import Changes
from fedstream_scheduler.lineage_context import lineage_context
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.privacy_ledger import BudgetSpent, PrivacyLedger, ledger_of
from fedstream_scheduler.round_control import RoundControl
from fedstream_scheduler.selection import select
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_scheduler.speeds import Speeds

log = logging.getLogger(__name__)

# How long past a round's deadline the driver keeps trying to reach the aggregator.
UNREACHABLE_GRACE_S = 30.0


class RunFailed(Exception):
    """The run cannot go on; its message is the run's failure reason."""


class _StreamBroken(Exception):
    def __init__(self, error: FedstreamError) -> None:
        super().__init__(error.public)
        self.error = error


class RoundDriver:
    """Runs rounds to their end and records them; never raises for a round that fails."""

    def __init__(
        self,
        state: StateStore,
        aggregator: RoundControl,
        agents: AgentRegistry,
        changes: Changes,
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.aggregator = aggregator
        self.agents = agents
        self.changes = changes
        self.settings = settings
        self.clock = clock
        self.public_endpoint = settings.aggregator_public_endpoint or settings.aggregator_endpoint
        self.speeds = Speeds(state)
        self.ledger = PrivacyLedger(state, clock)
        # When each round this replica follows entered aggregation (for the phase histogram).
        self._aggregating_since: dict[tuple[str, int], float] = {}

    async def run_round(self, run_id: str, spec: RunSpec, round_no: int, kind: RoundKind, base: str) -> str:
        """Runs one new round to its end; returns the committed version, or "" when it failed.
        Raises RunFailed when too few agents come in time."""
        waited = self.clock()
        live = await self._wait_for_agents(spec)
        fed = self.state.get_run(run_id).federation or "none"
        m.ROUND_PHASE_DURATION.labels(self.state.tenant, fed, "waiting_for_agents").observe(self.clock() - waited)
        speeds = self.speeds.of(spec.task) if spec.selection.prefer_fast else None
        participants = select(spec, live, round_no, kind, speeds)
        if kind == RoundKind.TRAIN and spec.privacy is not None:
            self._charge(self.state.get_run(run_id), round_no, spec, participants, live)
        now = self.clock()
        least, target = spec.round_updates(len(participants), kind)
        rec = RoundRecord(
            run_id, round_no, kind, RoundState.OPEN, participants, base, started_unix=now,
            deadline_unix=now + spec.round_timeout_s, min_updates=least, target_updates=target,
        )
        self.state.create_round(rec)
        m.ROUNDS_STARTED.labels(self.state.tenant, fed, kind).inc()
        m.AGENTS_SELECTED.labels(self.state.tenant, fed).inc(len(participants))
        await self.changes.notify()
        return await self.resume(run_id, spec, rec)

    def _charge(self, run: RunRecord, round_no: int, spec: RunSpec, participants: list[str], live: list[str]) -> None:
        """Charges a training round to the run's privacy ledger before it opens; raises RunFailed
        when it would pass the budget. A selection that prefers fast agents is no uniform draw:
        it is charged as if every eligible agent were selected."""
        assert spec.privacy is not None
        eligible = len(participants) if spec.selection.prefer_fast else len(live)
        try:
            self.ledger.charge(run, round_no, spec.privacy.spec(), participants, eligible)
        except BudgetSpent as e:
            raise RunFailed(e.public) from None

    async def _wait_for_agents(self, spec: RunSpec) -> list[str]:
        give_up = self.clock() + spec.wait_for_agents_s
        while True:
            live = self.agents.live_agents(spec.task)
            if len(live) >= spec.min_agents:
                return live
            if self.clock() >= give_up:
                offers = self.agents.live_offers()
                offered = "; ".join(f"{t} ({', '.join(ids)})" for t, ids in sorted(offers.items()))
                raise RunFailed(
                    f"only {len(live)} live agents for task {spec.task!r} after "
                    f"{spec.wait_for_agents_s:g} s, {spec.min_agents} needed; "
                    + (f"live agents offer: {offered}" if offered else "no agent is live")
                )
            await asyncio.sleep(0.2)

    def plan(self, spec: RunSpec, rec: RoundRecord) -> RoundPlan:
        """The plan the aggregator opens for a recorded round."""
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        distill = False
        if rec.kind == RoundKind.TRAIN:
            # This round's place among the run's training rounds: after those committed before it.
            ordinal = 1 + sum(
                1 for r in self.state.list_rounds(rec.run_id)
                if r.kind == RoundKind.TRAIN and r.state == RoundState.COMMITTED and r.round < rec.round
            )
            distill = isinstance(strategy, LinearStrategy) and strategy.distills(ordinal)
        train = rec.kind == RoundKind.TRAIN
        return RoundPlan(
            run_id=rec.run_id,
            round=rec.round,
            kind=RoundKind(rec.kind),
            base_version=rec.base_version,
            participants=tuple(rec.participants),
            min_updates=rec.min_updates,
            deadline_unix=rec.deadline_unix,
            strategy=strategy.name,
            strategy_params=canonical_params(spec.strategy.params),
            compression=spec.training.compression if rec.kind == RoundKind.TRAIN else "none",
            task=spec.task,
            distill=distill,
            target_updates=rec.target_updates,
            lineage_context=lineage_context(self.state.get_run(rec.run_id), spec, self._privacy_context(spec, rec)),
            privacy=spec.privacy.spec() if train and spec.privacy else None,
            secure_aggregation=spec.secure_aggregation.spec() if train and spec.secure_aggregation else None,
        )

    def _privacy_context(self, spec: RunSpec, rec: RoundRecord) -> dict[str, Any] | None:
        """What the lineage of a training round under differential privacy says of it."""
        if rec.kind != RoundKind.TRAIN or spec.privacy is None:
            return None
        run = self.state.get_run(rec.run_id)
        charged = [c for c in self.ledger.charges(ledger_of(run)) if c.run_id == rec.run_id and c.round == rec.round]
        return {
            "mode": spec.privacy.mode.value, "clip_norm": spec.privacy.clip_norm,
            "noise_multiplier": spec.privacy.noise_multiplier, "delta": spec.privacy.delta,
            "epsilon_budget": spec.privacy.epsilon_budget,
            "sampling": charged[0].sampling if charged else None,
            "epsilon": charged[0].epsilon if charged else None,
        }

    def assignments(self, spec: RunSpec, rec: RoundRecord, endpoints: dict[str, str]) -> dict[str, Assignment]:
        """Each participant's assignment. A root aggregator may send participants to its
        leaves (``endpoints``): each downloads and uploads there."""
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        training = TrainingConfig(**spec.training.model_dump(), **strategy.configure())
        if rec.kind == RoundKind.TRAIN and (spec.privacy or spec.secure_aggregation):
            # Under either, agents upload their change from the base (the finisher adds it back).
            training = dataclasses.replace(
                training, upload_delta=True,
                privacy=spec.privacy.spec() if spec.privacy else None,
                secure_aggregation=spec.secure_aggregation.spec() if spec.secure_aggregation else None,
            )
        # Under secure aggregation agents check the aggregator's roster against the selection.
        selected = tuple(rec.participants) if training.secure_aggregation is not None else ()
        out = {}
        for agent_id in rec.participants:
            endpoint = endpoints.get(agent_id, self.public_endpoint)
            out[agent_id] = Assignment(
                run_id=rec.run_id, round=rec.round, kind=RoundKind(rec.kind), task=spec.task,
                base_version=rec.base_version, model_endpoint=endpoint, upload_endpoint=endpoint,
                training=training, deadline_unix=rec.deadline_unix, participants=selected,
            )
        return out

    async def resume(self, run_id: str, spec: RunSpec, rec: RoundRecord) -> str:
        """Takes a recorded round from its state to its end: opens it on the aggregator (again:
        opening the same plan twice is harmless), (re)sends the assignments, then follows it."""
        loop = asyncio.get_running_loop()
        try:
            endpoints = await self.aggregator.open_round(
                self.plan(spec, rec), loop.time() + max(5.0, rec.deadline_unix - self.clock())
            )
        except FedstreamError as e:
            return await self.round_failed(run_id, rec.round, f"aggregator refused the round: {e.public}")
        if rec.state == RoundState.OPEN:
            self.state.transition_round(run_id, rec.round, RoundState.TRAINING)
            await self.changes.notify()
        # Sent to every participant connected now, and to any that connects while the round
        # runs (one that lost its stream, or all of them after a scheduler restart).
        key = (run_id, rec.round)
        self.agents.publish(key, self.assignments(spec, rec, endpoints))
        log.info("round %d (%s) assigned to %s", rec.round, rec.kind, ", ".join(rec.participants))
        try:
            return await self._follow(run_id, rec.round, rec.deadline_unix)
        finally:
            self.agents.withdraw(key)

    async def _follow(self, run_id: str, round_no: int, deadline: float) -> str:
        """Records the aggregator's view of the round until it ends; returns its version, or ""
        when it failed. Reconnects while the aggregator is unreachable, up to a grace period
        past the deadline."""
        delay = 0.2
        while True:
            try:
                ended = await self._watch(run_id, round_no)
            except _StreamBroken as broken:
                e = broken.error
                if isinstance(e, RoundNotFound):
                    return await self.round_failed(run_id, round_no, "the aggregator lost the round")
                if self.clock() > deadline + UNREACHABLE_GRACE_S:
                    return await self.round_failed(
                        run_id, round_no, f"aggregator unreachable past the deadline ({e.detail})"
                    )
                log.warning("lost the aggregator's round stream (%s); reconnecting", e.detail)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if ended is not None:
                return ended

    async def _watch(self, run_id: str, round_no: int) -> str | None:
        """Follows one stream of the round: its version ("" when failed) once it ended, None
        when the stream ended first. Raises _StreamBroken when the stream breaks."""
        stream = self.aggregator.watch_round(run_id, round_no)
        try:
            while True:
                try:
                    snapshot = await anext(stream)
                except StopAsyncIteration:
                    return None
                except FedstreamError as e:
                    raise _StreamBroken(e) from e
                ended = await self.record(run_id, round_no, snapshot)
                if ended is not None:
                    return ended
        finally:
            await stream.aclose()

    async def record(self, run_id: str, round_no: int, snap: RoundSnapshot) -> str | None:
        """Records one snapshot of the aggregator's; returns the round's version ("" when it
        failed or was cancelled) once it ended."""
        reports = list(snap.reports)
        current = self.state.get_round(run_id, round_no)
        if current.state in TERMINAL_ROUND_STATES:  # finished by another replica
            return current.version if current.state == RoundState.COMMITTED else ""
        if current.kind == RoundKind.TRAIN and snap.state != RoundState.CANCELLED:
            self._measure(current, snap)
        if snap.state == RoundState.TRAINING and reports != current.reports:
            self.state.update_round(run_id, round_no, reports=reports)
        elif snap.state == RoundState.AGGREGATING and current.state == RoundState.TRAINING:
            self.state.transition_round(run_id, round_no, RoundState.AGGREGATING, reports=reports)
            self._phase(run_id, current, "training")
        elif snap.state == RoundState.COMMITTED:
            await self._committed(current, snap, reports)
            return snap.version
        elif snap.state in (RoundState.FAILED, RoundState.CANCELLED):
            self.state.transition_round(
                run_id, round_no, snap.state, reports=reports or current.reports, reason=snap.reason,
                stragglers=list(snap.stragglers), finished_unix=self.clock(),
            )
            self._round_ended(run_id, round_no)
            await self.changes.notify()
            if snap.state == RoundState.FAILED:
                log.warning("round %d failed: %s", round_no, snap.reason)
            else:
                log.info("round %d cancelled: %s", round_no, snap.reason)
            return ""
        await self.changes.notify()
        return None

    def _measure(self, current: RoundRecord, snap: RoundSnapshot) -> None:
        """Records the speed of the agents whose update this snapshot shows counted for the
        first time, and of those that had not reported when the round ended."""
        seen = {r.agent_id for r in current.reports}
        new = [r.agent_id for r in snap.reports if r.agent_id not in seen]
        missed = list(snap.stragglers) if snap.state.terminal else []
        if not new and not missed:
            return
        try:
            task = str(self.state.get_run(current.run_id).spec.get("task", ""))
        except FedstreamError:
            return
        elapsed = max(0.0, self.clock() - current.started_unix)
        self.speeds.reported(task, new, elapsed)
        self.speeds.missed(task, missed, elapsed)

    async def _committed(self, current: RoundRecord, snap: RoundSnapshot, reports: list[UpdateReport]) -> None:
        run_id, round_no = current.run_id, current.round
        if current.state == RoundState.TRAINING:
            self.state.transition_round(run_id, round_no, RoundState.AGGREGATING, reports=reports)
        self.state.transition_round(
            run_id, round_no, RoundState.COMMITTED, reports=reports, version=snap.version,
            stragglers=list(snap.stragglers), finished_unix=self.clock(), metrics=dict(snap.metrics),
        )
        self._round_ended(run_id, round_no)
        self._phase(run_id, current, "aggregating")
        if current.kind == RoundKind.EVALUATE:
            log.info("round %d evaluated %s: %s", round_no, snap.version,
                     ", ".join(f"{k} {v:.4f}" for k, v in sorted(snap.metrics.items())))
        else:
            self.state.update_run(run_id, latest_version=snap.version)
            log.info("round %d committed as %s", round_no, snap.version)
        await self.changes.notify()

    async def round_failed(self, run_id: str, round_no: int, reason: str) -> str:
        """Fails a round (if it has not ended meanwhile); returns "" for the caller to return."""
        self.fail(run_id, round_no, reason)
        await self.changes.notify()
        log.warning("round %d failed: %s", round_no, reason)
        return ""

    def fail(self, run_id: str, round_no: int, reason: str) -> None:
        """Moves a round to failed and counts it; only logs when it has ended already."""
        try:
            self.state.transition_round(run_id, round_no, RoundState.FAILED, reason=reason,
                                        finished_unix=self.clock())
        except InvalidTransition as e:
            log.warning("%s", e.public)
        self._round_ended(run_id, round_no)

    def _phase(self, run_id: str, rnd: RoundRecord, phase: str) -> None:
        """Observes how long the round spent in ``phase``: training (open to aggregating), or
        aggregating (to the commit, measured from this replica's view of the phase start)."""
        try:
            fed = self.state.get_run(run_id).federation or "none"
        except FedstreamError:
            return
        if phase == "training":
            seconds = self.clock() - rnd.started_unix
            self._aggregating_since[(run_id, rnd.round)] = self.clock()
        else:
            since = self._aggregating_since.pop((run_id, rnd.round), None)
            if since is None:
                return
            seconds = self.clock() - since
        m.ROUND_PHASE_DURATION.labels(self.state.tenant, fed, phase).observe(seconds)

    def _round_ended(self, run_id: str, round_no: int) -> None:
        """Counts a round that has just committed or failed (never raises)."""
        try:
            run, rnd = self.state.get_run(run_id), self.state.get_round(run_id, round_no)
        except FedstreamError:
            return
        tenant, fed = self.state.tenant, run.federation or "none"
        if rnd.state == RoundState.COMMITTED:
            m.ROUNDS_COMMITTED.labels(tenant, fed, rnd.kind).inc()
            if rnd.kind == RoundKind.TRAIN:
                m.LAST_COMMIT.labels(tenant, fed).set(rnd.finished_unix)
            m.STRAGGLERS.labels(tenant, fed).inc(len(rnd.stragglers))
            if rnd.target_updates and len(rnd.reports) >= rnd.target_updates:
                m.UPDATES_NOT_NEEDED.labels(tenant, fed).inc(len(rnd.stragglers))
        elif rnd.state == RoundState.FAILED:
            m.ROUNDS_FAILED.labels(tenant, fed, rnd.kind, m.failure_reason(rnd.reason)).inc()
        else:
            return
        if rnd.finished_unix and rnd.started_unix:
            m.ROUND_DURATION.labels(tenant, fed, rnd.kind).observe(rnd.finished_unix - rnd.started_unix)
