"""The scheduler's logic, independent of gRPC: agent registry, assignment streams and runs.

A run is a sequence of rounds driven by one asyncio task: wait for enough live agents, select
participants, open the round on the aggregator, send assignments on the agents' open streams,
then follow the aggregator until the round is committed or failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict

import grpc
from google.protobuf import struct_pb2
from pydantic import ValidationError

from fedstream.errors import (
    AgentNotFound,
    FailedPrecondition,
    FedstreamError,
    InvalidArgument,
    InvalidTransition,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from fedstream.logs import log_context
from fedstream.metrics import LIMIT_HITS
from fedstream.state import AgentRecord, RoundRecord, RunRecord, StateStore
from fedstream.state.base import TERMINAL_ROUND_STATES
from fedstream.store.base import check_run_id
from fedstream.strategies import LinearStrategy, RobustStrategy, make_strategy
from fedstream.v1 import aggregator_pb2, round_pb2, scheduler_pb2
from fedstream_scheduler import metrics as m
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.enrollment import check_agent_id
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

KIND_PROTO = {
    "init": round_pb2.ROUND_KIND_INIT,
    "train": round_pb2.ROUND_KIND_TRAIN,
    "evaluate": round_pb2.ROUND_KIND_EVALUATE,
}
_STATE_NAMES = {
    round_pb2.ROUND_STATE_AGGREGATING: "aggregating",
    round_pb2.ROUND_STATE_COMMITTED: "committed",
    round_pb2.ROUND_STATE_FAILED: "failed",
    round_pb2.ROUND_STATE_TRAINING: "training",
}
TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})
_CLOSE = object()


def selection_size(spec: RunSpec, live: int) -> int:
    """Participants of a training round among ``live`` agents: the fraction rounded up, at
    least min_agents, at most max_agents (when set) and the live agents."""
    want = max(spec.min_agents, math.ceil(spec.fraction * live - 1e-9))
    return min(live, spec.max_agents or live, want)


class _RunFailed(Exception):
    pass


class SchedulerService:
    def __init__(
        self,
        state: StateStore,
        aggregator: AggregatorClient,
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.aggregator = aggregator
        self.settings = settings
        self.clock = clock
        self.public_endpoint = settings.aggregator_public_endpoint or settings.aggregator_endpoint
        self._streams: dict[str, asyncio.Queue[object]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()
        # This replica's name on the leases of the runs it drives.
        self.instance_id = f"scheduler-{uuid.uuid4().hex[:12]}"
        self._adopter: asyncio.Task[None] | None = None
        # Each running round's assignment of every participant, sent again when one reconnects.
        self._pending: dict[tuple[str, int], dict[str, scheduler_pb2.AgentEvent]] = {}
        # When each round this replica follows entered aggregation (for the phase histogram).
        self._aggregating_since: dict[tuple[str, int], float] = {}

    # Agents.

    def register(self, agent: AgentRecord) -> float:
        """Creates or refreshes an agent's record; returns the heartbeat interval."""
        check_agent_id(agent.agent_id)
        now = self.clock()

        def refresh(current: AgentRecord) -> AgentRecord:
            # What the agent reports changes; what operators and enrollment decided does not.
            return dataclasses.replace(current, labels=agent.labels, capabilities=agent.capabilities,
                                       tasks=agent.tasks, last_heartbeat_unix=now)

        try:
            self.state.update_agent(agent.agent_id, refresh)
        except AgentNotFound:
            agent.registered_unix = agent.last_heartbeat_unix = now
            self.state.put_agent(agent)
        log.info("agent %s registered (%s)", agent.agent_id, agent.capabilities.get("device", "?"))
        return self.settings.heartbeat_interval_s

    def heartbeat(self, agent_id: str) -> None:
        """Raises AgentNotFound for an agent that never registered."""
        self.state.heartbeat(agent_id, self.clock())

    async def assignments(
        self, agent_id: str, still_allowed: Callable[[], object] | None = None
    ) -> AsyncIterator[scheduler_pb2.AgentEvent]:
        """The agent's assignment stream; a newer stream of the same agent replaces it.

        ``still_allowed`` is called every heartbeat interval while the stream is idle and ends
        it by raising (a revoked certificate, an agent deleted or disabled through another
        replica)."""
        agent = self.state.get_agent(agent_id)
        if agent.disabled:
            raise PermissionDenied(f"agent {agent_id!r} is disabled")
        queue: asyncio.Queue[object] = asyncio.Queue(self.settings.limits.assignment_queue)
        old = self._streams.get(agent_id)
        if old is not None:
            self._offer(old, _CLOSE)
        self._streams[agent_id] = queue
        m.AGENTS_CONNECTED.labels(self.state.tenant).set(len(self._streams))
        for events in list(self._pending.values()):
            if agent_id in events:
                self._offer(queue, events[agent_id])
        log.info("agent %s connected", agent_id)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.settings.heartbeat_interval_s)
                except TimeoutError:
                    if still_allowed is not None:
                        still_allowed()
                    continue
                if event is _CLOSE:
                    return
                if isinstance(event, FedstreamError):
                    raise event
                assert isinstance(event, scheduler_pb2.AgentEvent)
                yield event
        finally:
            if self._streams.get(agent_id) is queue:
                del self._streams[agent_id]
            m.AGENTS_CONNECTED.labels(self.state.tenant).set(len(self._streams))
            log.info("agent %s disconnected", agent_id)

    def _offer(self, queue: asyncio.Queue[object], item: object) -> None:
        """Puts an item on an agent's stream queue. A queue that is full (an agent not reading
        its stream) is emptied and its stream closed: the agent reconnects and is sent its
        pending assignments again, so nothing is lost and memory stays bounded."""
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            LIMIT_HITS.labels(self.state.tenant, "scheduler", "assignment_queue").inc()
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(ResourceExhausted("this agent's assignment stream fell behind; reconnect"))

    def is_connected(self, agent_id: str) -> bool:
        """Whether the agent has its assignment stream open on this replica."""
        return agent_id in self._streams

    def set_agent_disabled(self, agent_id: str, disabled: bool) -> AgentRecord:
        """Disables (or enables again) an agent: a disabled one is never selected, its open
        stream is closed and it cannot open another. Raises AgentNotFound."""
        agent = self.state.update_agent(agent_id, lambda a: dataclasses.replace(a, disabled=disabled))
        log.info("agent %s %s", agent_id, "disabled" if disabled else "enabled")
        stream = self._streams.get(agent_id)
        if disabled and stream is not None:
            self._offer(stream, PermissionDenied(f"agent {agent_id!r} is disabled"))
        return agent

    def delete_agent(self, agent_id: str) -> None:
        """Forgets an agent: its certificates are refused from now on and its open stream is
        closed; it needs a new enrollment to come back. Raises AgentNotFound."""
        self.state.delete_agent(agent_id)
        stream = self._streams.get(agent_id)
        if stream is not None:
            self._offer(stream, Unauthenticated(f"agent {agent_id!r} was deleted"))
        log.info("agent %s deleted", agent_id)

    def live_agents(self, task: str) -> list[str]:
        """Agents with a fresh heartbeat, an open stream, not disabled, offering the task."""
        now = self.clock()
        ttl = self.settings.heartbeat_ttl_s
        return [
            a.agent_id
            for a in self.state.list_agents()
            if a.agent_id in self._streams
            and not a.disabled
            and now - a.last_heartbeat_unix <= ttl
            and (not a.tasks or task in a.tasks)
        ]

    # Runs.

    def start_run(
        self, spec_fields: dict[str, object], run_id: str = "", *, federation: str = "", trigger: str = "grpc"
    ) -> RunRecord:
        """Validates a run spec and starts the run; raises InvalidArgument or AlreadyExists."""
        try:
            spec = RunSpec.model_validate(spec_fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "spec"
            raise InvalidArgument(f"invalid run spec: {where}: {first['msg']}") from None
        if spec.min_updates > max(spec.min_agents, spec.max_agents or spec.min_agents):
            raise InvalidArgument("invalid run spec: min_updates exceeds the agents a round can have")
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        spec.strategy.params = strategy.params.model_dump()
        if isinstance(strategy, RobustStrategy) and spec.training.compression != "none":
            raise InvalidArgument(f"invalid run spec: strategy {strategy.name!r} needs training.compression none")
        run_id = check_run_id(run_id or f"run-{uuid.uuid4().hex[:12]}")
        run = RunRecord(run_id, spec.model_dump(), created_unix=self.clock(), federation=federation, trigger=trigger)
        self.state.create_run(run)
        self._try_lead(run_id)
        self._launch(run_id, spec)
        m.RUNS_STARTED.labels(self.state.tenant, federation or "none", trigger).inc()
        log.info("run %s started: task %s, %d rounds", run_id, spec.task, spec.rounds)
        return run

    def get_run(self, run_id: str) -> tuple[RunRecord, list[RoundRecord]]:
        return self.state.get_run(run_id), self.state.list_rounds(run_id)

    async def watch_run(self, run_id: str) -> AsyncIterator[tuple[RunRecord, list[RoundRecord]]]:
        """Yields the run now and after each change, until it has finished."""
        last = None
        while True:
            async with self._changed:
                run, rounds = self.get_run(run_id)
                current = (asdict(run), [asdict(r) for r in rounds])
                if current == last:
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                    continue
            last = current
            yield run, rounds
            if run.state in TERMINAL_RUN_STATES:
                return

    async def cancel_run(self, run_id: str) -> RunRecord:
        run = self.state.get_run(run_id)
        if run.state in TERMINAL_RUN_STATES:
            raise FailedPrecondition(f"run {run_id!r} has already {run.state}")
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        run = self._finish_run(run_id, "cancelled", "cancelled by request")
        return run

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _finish_run(self, run_id: str, state: str, reason: str = "") -> RunRecord:
        run = self.state.get_run(run_id)
        if run.state in TERMINAL_RUN_STATES:
            return run
        for rnd in self.state.list_rounds(run_id):
            if rnd.state not in TERMINAL_ROUND_STATES:
                self._try_transition(run_id, rnd.round, "failed", reason=reason or state, finished_unix=self.clock())
                self._round_ended(run_id, rnd.round)
        m.RUNS_FINISHED.labels(self.state.tenant, run.federation or "none", state).inc()
        return self.state.update_run(run_id, state=state, reason=reason, finished_unix=self.clock())

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
        if rnd.state == "committed":
            m.ROUNDS_COMMITTED.labels(tenant, fed, rnd.kind).inc()
            if rnd.kind == "train":
                m.LAST_COMMIT.labels(tenant, fed).set(rnd.finished_unix)
            m.STRAGGLERS.labels(tenant, fed).inc(len(rnd.stragglers))
        elif rnd.state == "failed":
            m.ROUNDS_FAILED.labels(tenant, fed, rnd.kind, m.failure_reason(rnd.reason)).inc()
        else:
            return
        if rnd.finished_unix and rnd.started_unix:
            m.ROUND_DURATION.labels(tenant, fed, rnd.kind).observe(rnd.finished_unix - rnd.started_unix)

    def _try_transition(self, run_id: str, round_: int, to: str, **changes: object) -> None:
        try:
            self.state.transition_round(run_id, round_, to, **changes)
        except InvalidTransition as e:
            log.warning("%s", e.public)

    def _lease(self, run_id: str) -> str:
        return f"run:{run_id}"

    def _try_lead(self, run_id: str) -> bool:
        """Takes or renews this replica's lease on driving a run."""
        ttl = self.settings.run_lease_ttl_s
        return self.state.acquire_lease(self._lease(run_id), self.instance_id, ttl, self.clock())

    def _launch(self, run_id: str, spec: RunSpec) -> None:
        self._tasks[run_id] = asyncio.get_running_loop().create_task(self._drive(run_id, spec))

    async def adopt_runs(self) -> None:
        """Forever: drives every running run that no live replica holds the lease of.

        A run started here is driven here; after this or another replica dies, its lease
        lapses and a surviving (or restarted) replica picks the run up where the state store
        says it stands.
        """
        while True:
            try:
                for run in self.state.list_runs():
                    task = self._tasks.get(run.run_id)
                    if run.state != "running" or (task is not None and not task.done()):
                        continue
                    if self._try_lead(run.run_id):
                        log.info("run %s: taking over", run.run_id)
                        self._launch(run.run_id, RunSpec.model_validate(run.spec))
            except FedstreamError as e:
                log.warning("cannot look for runs to drive: %s", e.public)
            await asyncio.sleep(self.settings.run_lease_ttl_s / 3)

    async def _keep_lease(self, run_id: str, driver: asyncio.Task[None]) -> None:
        while not driver.done():
            await asyncio.sleep(self.settings.run_lease_ttl_s / 3)
            try:
                held = self._try_lead(run_id)
            except FedstreamError as e:
                log.warning("run %s: cannot renew its lease: %s", run_id, e.public)
                continue
            if not held:
                log.warning("run %s: another replica drives it now; stopping here", run_id)
                driver.cancel()
                return

    async def _drive(self, run_id: str, spec: RunSpec) -> None:
        me = asyncio.current_task()
        assert me is not None
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(run_id, me))
        with log_context(run_id=run_id):
            try:
                await self._drive_rounds(run_id, spec)
            except asyncio.CancelledError:
                raise
            except _RunFailed as e:
                self._finish_run(run_id, "failed", str(e))
                log.error("run failed: %s", e)
            except Exception as e:
                log.exception("run failed unexpectedly")
                self._finish_run(run_id, "failed", f"internal error: {type(e).__name__}")
            finally:
                keeper.cancel()
                await self._notify()

    async def _drive_rounds(self, run_id: str, spec: RunSpec) -> None:
        """Drives a run to its end from wherever its records say it stands."""
        base = spec.initial_version
        committed = failures = round_no = 0
        rounds = self.state.list_rounds(run_id)
        for r in rounds:
            round_no = max(round_no, r.round)
            if r.state == "committed":
                base = r.version
                committed += r.kind == "train"
                failures = 0
            elif r.state == "failed" and r.kind == "train":
                failures += 1
        evaluated = {r.base_version for r in rounds if r.kind == "evaluate" and r.state == "committed"}
        last = rounds[-1] if rounds else None
        if last is not None and last.state not in TERMINAL_ROUND_STATES:
            log.info("resuming round %d (%s)", last.round, last.state)
            version = await self._resume_round(run_id, spec, last)
            if version and last.kind == "evaluate":
                evaluated.add(version)
            elif version:
                base = version
                committed += last.kind == "train"
                failures = 0
            elif last.kind == "train":
                failures += 1
        if not base:
            if last is not None:
                raise _RunFailed("the init round failed: no initial model")
            version = await self._round(run_id, spec, 0, "init", "")
            if not version:
                raise _RunFailed("the init round failed: no initial model")
            base = version
        while committed < spec.rounds and not spec.evaluate_only:
            if failures >= self.settings.max_consecutive_failed_rounds:
                raise _RunFailed(f"{failures} rounds in a row failed")
            if self.state.get_run(run_id).state != "running":  # cancelled through another replica
                return
            round_no += 1
            version = await self._round(run_id, spec, round_no, "train", base)
            if version:
                base = version
                committed += 1
                failures = 0
                every = spec.evaluate_every
                if every and (committed % every == 0 or committed == spec.rounds):
                    round_no += 1
                    await self._round(run_id, spec, round_no, "evaluate", base)  # a failure is only logged
            else:
                failures += 1
        pending = spec.evaluate_only and base not in evaluated
        if pending and not await self._round(run_id, spec, round_no + 1, "evaluate", base):
            raise _RunFailed(f"the evaluation of {base} failed")
        if failures >= self.settings.max_consecutive_failed_rounds:
            raise _RunFailed(f"{failures} rounds in a row failed")
        run = self.state.update_run(run_id, state="succeeded", finished_unix=self.clock())
        m.RUNS_FINISHED.labels(self.state.tenant, run.federation or "none", "succeeded").inc()
        log.info("run succeeded: %d rounds committed, latest %s", committed, base)

    async def _wait_for_agents(self, spec: RunSpec) -> list[str]:
        give_up = self.clock() + spec.wait_for_agents_s
        while True:
            live = self.live_agents(spec.task)
            if len(live) >= spec.min_agents:
                return live
            if self.clock() >= give_up:
                raise _RunFailed(
                    f"only {len(live)} live agents for task {spec.task!r} after "
                    f"{spec.wait_for_agents_s:g} s, {spec.min_agents} needed"
                )
            await asyncio.sleep(0.2)

    def _select(self, spec: RunSpec, live: list[str], round_no: int, kind: str) -> list[str]:
        want = 1 if kind == "init" else selection_size(spec, len(live))
        rng = random.Random(f"{spec.training.seed}:{round_no}")
        return sorted(rng.sample(sorted(live), want))

    async def _round(self, run_id: str, spec: RunSpec, round_no: int, kind: str, base: str) -> str:
        """Runs one round to its end; returns the committed version, or "" when it failed."""
        waited = self.clock()
        live = await self._wait_for_agents(spec)
        fed = self.state.get_run(run_id).federation or "none"
        m.ROUND_PHASE_DURATION.labels(self.state.tenant, fed, "waiting_for_agents").observe(self.clock() - waited)
        participants = self._select(spec, live, round_no, kind)
        now = self.clock()
        rec = RoundRecord(
            run_id, round_no, kind, "open", participants, base, started_unix=now,
            deadline_unix=now + spec.round_timeout_s,
            min_updates=max(1, min(len(participants), spec.min_updates or spec.min_agents)),
        )
        self.state.create_round(rec)
        m.ROUNDS_STARTED.labels(self.state.tenant, fed, kind).inc()
        m.AGENTS_SELECTED.labels(self.state.tenant, fed).inc(len(participants))
        await self._notify()
        return await self._resume_round(run_id, spec, rec)

    async def _resume_round(self, run_id: str, spec: RunSpec, rec: RoundRecord) -> str:
        """Takes a recorded round from its state to its end: opens it on the aggregator (again:
        opening the same plan twice is harmless), (re)sends the assignments, then follows it."""
        strategy = make_strategy(spec.strategy.name, spec.strategy.params)
        params = struct_pb2.Struct()
        params.update(spec.strategy.params)
        distill = False
        if rec.kind == "train":
            # This round's place among the run's training rounds: after those committed before it.
            ordinal = 1 + sum(
                1 for r in self.state.list_rounds(run_id)
                if r.kind == "train" and r.state == "committed" and r.round < rec.round
            )
            distill = isinstance(strategy, LinearStrategy) and strategy.distills(ordinal)
        plan = aggregator_pb2.RoundPlan(
            run_id=run_id,
            round=rec.round,
            kind=KIND_PROTO[rec.kind],
            base_version=rec.base_version,
            participants=rec.participants,
            min_updates=rec.min_updates,
            deadline_unix=rec.deadline_unix,
            strategy=round_pb2.StrategySpec(name=strategy.name, params=params),
            compression=spec.training.compression if rec.kind == "train" else "none",
            task=spec.task,
            distill=distill,
        )
        loop = asyncio.get_running_loop()
        try:
            endpoints = await self.aggregator.open_round(
                plan, loop.time() + max(5.0, rec.deadline_unix - self.clock())
            )
        except grpc.aio.AioRpcError as e:
            return await self._round_failed(run_id, rec.round, f"aggregator refused the round: {e.details()}")
        if rec.state == "open":
            self.state.transition_round(run_id, rec.round, "training")
            await self._notify()
        # Sent to every participant connected now, and to any that connects while the round
        # runs (one that lost its stream, or all of them after a scheduler restart). Agents do
        # each (run, round) once, so a repeat is harmless.
        # A root aggregator may send participants to its leaves: each downloads and uploads there.
        training = round_pb2.TrainingConfig(**spec.training.model_dump(), **strategy.configure())
        events: dict[str, scheduler_pb2.AgentEvent] = {}
        for agent_id in rec.participants:
            endpoint = endpoints.get(agent_id, self.public_endpoint)
            events[agent_id] = scheduler_pb2.AgentEvent(
                assignment=scheduler_pb2.Assignment(
                    run_id=run_id,
                    round=rec.round,
                    kind=KIND_PROTO[rec.kind],
                    task=spec.task,
                    base_version=rec.base_version,
                    model_endpoint=endpoint,
                    upload_endpoint=endpoint,
                    training=training,
                    deadline_unix=rec.deadline_unix,
                )
            )
        key = (run_id, rec.round)
        self._pending[key] = events
        for agent_id, event in events.items():
            queue = self._streams.get(agent_id)
            if queue is not None:
                self._offer(queue, event)
        log.info("round %d (%s) assigned to %s", rec.round, rec.kind, ", ".join(rec.participants))
        try:
            return await self._follow(run_id, rec.round, rec.deadline_unix)
        finally:
            self._pending.pop(key, None)

    async def _follow(self, run_id: str, round_no: int, deadline: float) -> str:
        grace = 30.0
        delay = 0.2
        while True:
            try:
                async for event in self.aggregator.watch_round(run_id, round_no):
                    state = _STATE_NAMES.get(event.state)
                    reports = [
                        {
                            "agent_id": r.agent_id,
                            "num_examples": r.num_examples,
                            "metrics": dict(r.metrics),
                            "bytes_received": r.bytes_received,
                        }
                        for r in event.reports
                    ]
                    current = self.state.get_round(run_id, round_no)
                    if current.state in TERMINAL_ROUND_STATES:  # finished by another replica
                        return current.version if current.state == "committed" else ""
                    if state == "training" and reports != current.reports:
                        self.state.update_round(run_id, round_no, reports=reports)
                    elif state == "aggregating" and current.state == "training":
                        self.state.transition_round(run_id, round_no, "aggregating", reports=reports)
                        self._phase(run_id, current, "training")
                    elif state == "committed":
                        if current.state == "training":
                            self.state.transition_round(run_id, round_no, "aggregating", reports=reports)
                        self.state.transition_round(
                            run_id,
                            round_no,
                            "committed",
                            reports=reports,
                            version=event.version,
                            stragglers=list(event.stragglers),
                            finished_unix=self.clock(),
                            metrics=dict(event.metrics),
                        )
                        self._round_ended(run_id, round_no)
                        self._phase(run_id, current, "aggregating")
                        if current.kind == "evaluate":
                            log.info("round %d evaluated %s: %s", round_no, event.version,
                                     ", ".join(f"{k} {v:.4f}" for k, v in sorted(event.metrics.items())))
                        else:
                            self.state.update_run(run_id, latest_version=event.version)
                            log.info("round %d committed as %s", round_no, event.version)
                        await self._notify()
                        return event.version
                    elif state == "failed":
                        self.state.transition_round(
                            run_id,
                            round_no,
                            "failed",
                            reports=reports,
                            reason=event.reason,
                            stragglers=list(event.stragglers),
                            finished_unix=self.clock(),
                        )
                        self._round_ended(run_id, round_no)
                        await self._notify()
                        log.warning("round %d failed: %s", round_no, event.reason)
                        return ""
                    await self._notify()
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return await self._round_failed(run_id, round_no, "the aggregator lost the round")
                if self.clock() > deadline + grace:
                    return await self._round_failed(
                        run_id, round_no, f"aggregator unreachable past the deadline ({e.code().name})"
                    )
                log.warning("lost the aggregator's round stream (%s); reconnecting", e.code().name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _round_failed(self, run_id: str, round_no: int, reason: str) -> str:
        self._try_transition(run_id, round_no, "failed", reason=reason, finished_unix=self.clock())
        self._round_ended(run_id, round_no)
        await self._notify()
        log.warning("round %d failed: %s", round_no, reason)
        return ""

    def start_adopting(self) -> None:
        """Starts looking for runs to drive (see adopt_runs)."""
        self._adopter = asyncio.get_running_loop().create_task(self.adopt_runs())

    async def close(self) -> None:
        if self._adopter is not None:
            self._adopter.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for queue in self._streams.values():
            self._offer(queue, _CLOSE)
