"""Runs: starting, watching and cancelling them (``cancelling``), and driving each, round after
round, on this replica while it holds the run's lease (adopting the runs whose driver died)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from fedstream.errors import FailedPrecondition, FedstreamError, InvalidArgument
from fedstream.ids import check_run_id
from fedstream.logs import log_context
from fedstream.rounds import TERMINAL_ROUND_STATES, TERMINAL_RUN_STATES, RoundKind, RoundState, RunState
from fedstream.state import AuditAction, RoundRecord, RunRecord, StateStore
from fedstream.strategies import RobustStrategy, make_strategy
from fedstream_scheduler import metrics as m
from fedstream_scheduler.audit import SYSTEM, Actor, Auditor
from fedstream_scheduler.buffered import BufferedDriver
from fedstream_scheduler.cancelling import Canceller
from fedstream_scheduler.changes import Changes
from fedstream_scheduler.leases import RunLeases
from fedstream_scheduler.models import RunSpec, check_asynchronous, check_privacy
from fedstream_scheduler.round_driver import RoundDriver, RunFailed
from fedstream_scheduler.selection import selection_size
from fedstream_scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands, read from its round records."""

    base: str
    committed: int = 0
    failures: int = 0
    round_no: int = 0

    def ended(self, kind: str, version: str) -> None:
        """Counts a round of ``kind`` that committed ``version`` (or failed, when empty)."""
        if version:
            self.base = version
            self.committed += kind == RoundKind.TRAIN
            self.failures = 0
        elif kind == RoundKind.TRAIN:
            self.failures += 1


def parse_spec(fields: dict[str, object]) -> RunSpec:
    """A validated run spec with its strategy's parameters filled in; raises InvalidArgument."""
    try:
        spec = RunSpec.model_validate(fields)
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
    check_asynchronous(spec, strategy)
    check_privacy(spec, strategy)
    return spec


class RunService:
    """One tenant's runs, each driven by one asyncio task on the replica that leads it."""

    def __init__(
        self,
        state: StateStore,
        rounds: RoundDriver,
        leases: RunLeases,
        changes: Changes,
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
        audit: Auditor | None = None,
    ) -> None:
        self.state = state
        self.rounds = rounds
        self.buffered = BufferedDriver(rounds)
        self.audit = audit or Auditor(state, clock)
        self.canceller = Canceller(state, rounds.aggregator, rounds, clock)
        self.leases = leases
        self.changes = changes
        self.settings = settings
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._adopter: asyncio.Task[None] | None = None

    def start_run(
        self, spec_fields: dict[str, object], run_id: str = "", *, federation: str = "", trigger: str = "grpc",
        by: Actor = SYSTEM,
    ) -> RunRecord:
        """Validates a run spec and starts the run (audited as ``by``'s); raises
        InvalidArgument or AlreadyExists."""
        spec = parse_spec(spec_fields)
        run_id = check_run_id(run_id or f"run-{uuid.uuid4().hex[:12]}")
        self._check_budget(spec, federation or f"run:{run_id}")
        run = RunRecord(run_id, spec.model_dump(), created_unix=self.clock(), federation=federation, trigger=trigger,
                        started_by=by.describe())
        self.state.create_run(run)
        self.leases.try_lead(run_id)
        self._launch(run_id, spec)
        m.RUNS_STARTED.labels(self.state.tenant, federation or "none", trigger).inc()
        log.info("run %s started: task %s, %d rounds", run_id, spec.task, spec.rounds)
        details = {"federation": federation} if federation else {}
        self.audit.record(by, AuditAction.RUN_START, f"run/{run_id}", trigger=trigger, **details)
        return run

    def _check_budget(self, spec: RunSpec, ledger_id: str) -> None:
        """Raises BudgetSpent (FailedPrecondition) when a run under differential privacy could
        not open even its first training round: as many agents as are live now selected (all
        of them for a prefer_fast selection), or min_agents when none is."""
        if spec.privacy is None or spec.evaluate_only:
            return
        live = len(self.rounds.agents.live_agents(spec.task))
        selected = selection_size(spec, live) if live else spec.min_agents
        eligible = selected if spec.selection.prefer_fast or not live else live
        self.rounds.ledger.check_room(ledger_id, spec.privacy.spec(), selected, eligible)

    def get_run(self, run_id: str) -> tuple[RunRecord, list[RoundRecord]]:
        """The run and its rounds; raises RunNotFound."""
        return self.state.get_run(run_id), self.state.list_rounds(run_id)

    def list_runs(self, federation: str = "", state: str = "") -> list[RunRecord]:
        """The tenant's runs, or a federation's (FederationNotFound), or those in ``state``."""
        if federation:
            self.state.get_federation(federation)
        runs = self.state.list_runs()
        return [r for r in runs if (not federation or r.federation == federation) and (not state or r.state == state)]

    async def watch_run(self, run_id: str) -> AsyncIterator[tuple[RunRecord, list[RoundRecord]]]:
        """Yields the run now and after each change, until it has finished."""
        last = None
        while True:
            async with self.changes.condition:
                run, rounds = self.get_run(run_id)
                current = (asdict(run), [asdict(r) for r in rounds])
                if current == last:
                    try:
                        await asyncio.wait_for(self.changes.condition.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                    continue
            last = current
            yield run, rounds
            if run.state in TERMINAL_RUN_STATES:
                return

    async def cancel_run(self, run_id: str, by: Actor = SYSTEM) -> RunRecord:
        """Cancels the run on behalf of ``by`` (audited): the cancel is recorded first, the
        run's driver stopped, and its unfinished rounds abandoned on the aggregator (nothing
        of them is committed after this). Raises RunNotFound, or FailedPrecondition when the
        run has ended already."""
        run = self.state.get_run(run_id)
        if run.state in TERMINAL_RUN_STATES:
            raise FailedPrecondition(f"run {run_id!r} has already {run.state}")
        reason = f"cancelled by {by.describe()}"
        # No await since the check: this replica's driver cannot end the run in between.
        run = self.state.update_run(run_id, state=RunState.CANCELLED, reason=reason, finished_unix=self.clock())
        m.RUNS_FINISHED.labels(self.state.tenant, run.federation or "none", RunState.CANCELLED).inc()
        self.audit.record(by, AuditAction.RUN_CANCEL, f"run/{run_id}")
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.canceller.abort_rounds(run_id, f"run {reason}")
        await self.changes.notify()
        return self.state.get_run(run_id)

    def _finish_run(self, run_id: str, state: RunState, reason: str = "") -> RunRecord:
        run = self.state.get_run(run_id)
        if run.state in TERMINAL_RUN_STATES:
            return run
        for rnd in self.state.list_rounds(run_id):
            if rnd.state not in TERMINAL_ROUND_STATES:
                self.rounds.fail(run_id, rnd.round, reason or state)
        m.RUNS_FINISHED.labels(self.state.tenant, run.federation or "none", state).inc()
        return self.state.update_run(run_id, state=state, reason=reason, finished_unix=self.clock())

    def _launch(self, run_id: str, spec: RunSpec) -> None:
        self._tasks[run_id] = asyncio.get_running_loop().create_task(self._drive(run_id, spec))

    def start_adopting(self) -> None:
        """Starts looking for runs to drive (see adopt_runs)."""
        self._adopter = asyncio.get_running_loop().create_task(self.adopt_runs())

    async def adopt_runs(self) -> None:
        """Forever: drives every running run that no live replica holds the lease of.

        A run started here is driven here; after this or another replica dies, its lease
        lapses and a surviving (or restarted) replica picks the run up where the state store
        says it stands.
        """
        while True:
            try:
                runs = self.state.list_runs()
                await self.canceller.retry_aborts(runs)
                for run in runs:
                    task = self._tasks.get(run.run_id)
                    if run.state != RunState.RUNNING or (task is not None and not task.done()):
                        continue
                    if self.leases.try_lead(run.run_id):
                        log.info("run %s: taking over", run.run_id)
                        self._launch(run.run_id, RunSpec.model_validate(run.spec))
            except FedstreamError as e:
                log.warning("cannot look for runs to drive: %s", e.public)
            await asyncio.sleep(self.leases.renew_every_s)

    async def _drive(self, run_id: str, spec: RunSpec) -> None:
        me = asyncio.current_task()
        assert me is not None
        keeper = asyncio.get_running_loop().create_task(self.leases.keep(run_id, me))
        with log_context(run_id=run_id):
            try:
                await self._drive_rounds(run_id, spec)
            except asyncio.CancelledError:
                raise
            except RunFailed as e:
                self._finish_run(run_id, RunState.FAILED, str(e))
                log.error("run failed: %s", e)
            except Exception as e:
                log.exception("run failed unexpectedly")
                self._finish_run(run_id, RunState.FAILED, f"internal error: {type(e).__name__}")
            finally:
                self.buffered.forget(run_id)
                keeper.cancel()
                await self.changes.notify()

    async def _drive_rounds(self, run_id: str, spec: RunSpec) -> None:
        """Drives a run to its end from wherever its records say it stands."""
        progress, evaluated = await self._resume(run_id, spec)
        limit = self.settings.max_consecutive_failed_rounds
        while progress.committed < spec.rounds and not spec.evaluate_only:
            if self.state.get_run(run_id).state != RunState.RUNNING:  # cancelled through another replica
                return
            if progress.failures >= limit:
                raise RunFailed(f"{progress.failures} rounds in a row failed")
            progress.round_no += 1
            if spec.asynchronous is not None:
                version = await self.buffered.run_buffer(run_id, spec, progress.round_no, progress.base)
            else:
                version = await self.rounds.run_round(run_id, spec, progress.round_no, RoundKind.TRAIN, progress.base)
            progress.ended(RoundKind.TRAIN, version)
            every = spec.evaluate_every
            if version and every and (progress.committed % every == 0 or progress.committed == spec.rounds):
                progress.round_no += 1
                # A failed evaluation is only logged.
                await self.rounds.run_round(run_id, spec, progress.round_no, RoundKind.EVALUATE, progress.base)
        base = progress.base
        pending = spec.evaluate_only and base not in evaluated
        if pending and not await self.rounds.run_round(run_id, spec, progress.round_no + 1, RoundKind.EVALUATE, base):
            raise RunFailed(f"the evaluation of {base} failed")
        if self.state.get_run(run_id).state != RunState.RUNNING:  # cancelled through another replica
            return
        if progress.failures >= limit:
            raise RunFailed(f"{progress.failures} rounds in a row failed")
        run = self.state.update_run(run_id, state=RunState.SUCCEEDED, finished_unix=self.clock())
        m.RUNS_FINISHED.labels(self.state.tenant, run.federation or "none", RunState.SUCCEEDED).inc()
        log.info("run succeeded: %d rounds committed, latest %s", progress.committed, base)

    async def _resume(self, run_id: str, spec: RunSpec) -> tuple[Progress, set[str]]:
        """Where the run stands, with the versions it evaluated, once its unfinished round (if
        any) has ended and it has an initial model (an init round when it had none)."""
        progress = Progress(spec.initial_version)
        rounds = self.state.list_rounds(run_id)
        for r in rounds:
            progress.round_no = max(progress.round_no, r.round)
            if r.state == RoundState.COMMITTED:
                progress.ended(r.kind, r.version)
            elif r.state == RoundState.FAILED:
                progress.ended(r.kind, "")
        evaluated = {r.base_version for r in rounds if r.kind == RoundKind.EVALUATE and r.state == RoundState.COMMITTED}
        last = rounds[-1] if rounds else None
        if last is not None and last.state not in TERMINAL_ROUND_STATES and spec.asynchronous and last.kind == RoundKind.TRAIN:
            progress.round_no = last.round - 1  # the buffer is taken on again by the asynchronous driver
        elif last is not None and last.state not in TERMINAL_ROUND_STATES:
            log.info("resuming round %d (%s)", last.round, last.state)
            version = await self.rounds.resume(run_id, spec, last)
            if version and last.kind == RoundKind.EVALUATE:
                evaluated.add(version)
            else:
                progress.ended(last.kind, version)
        if not progress.base:
            if last is not None:
                raise RunFailed("the init round failed: no initial model")
            version = await self.rounds.run_round(run_id, spec, 0, RoundKind.INIT, "")
            if not version:
                raise RunFailed("the init round failed: no initial model")
            progress.base = version
        return progress, evaluated

    async def close(self) -> None:
        """Stops adopting and driving runs (their leases lapse for another replica)."""
        if self._adopter is not None:
            self._adopter.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
