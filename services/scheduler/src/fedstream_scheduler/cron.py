"""Scheduled runs: each federation's cron schedule, fired by the scheduler itself.

Every replica ticks; the one holding the Redis lease ``cron`` fires. A slot is the latest time
the federation's cron expression matched (read in its time zone). It fires at most once: its
run id is derived from the federation and the slot, and a run id exists only once, so a lease
that changes hands mid-tick cannot start a slot twice. A slot that is found more than
``grace_s`` late (every replica was down when it came) is a missed slot, handled by the
federation's policy: ``skip`` records it and starts nothing, ``run_once`` starts one run on
recovery (however many slots were missed). Slots before the federation was created never
fire; a slot that comes while the federation's previous run still runs is skipped.

Each federation is ticked on its own: a schedule that cannot be read (an expression that never
matches, stored before such expressions were refused at creation, or a time zone no longer
known) is broken: it is skipped, shown in the API, counted in ``fedstream_schedules_broken``
and logged once, and every other federation still fires in the same tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from fedstream.errors import AlreadyExists, FedstreamError
from fedstream.rounds import RunState
from fedstream.state import FederationRecord
from fedstream_scheduler import metrics as m
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.audit import Actor

log = logging.getLogger(__name__)

LEASE = "cron"


def latest_slot(schedule: dict[str, str], now_unix: float) -> float:
    """The latest time at or before ``now_unix`` that the schedule matches. (croniter's
    get_prev excludes its start when it is itself a match: starting one second on, at a whole
    second, includes it.)"""
    tz = ZoneInfo(schedule.get("timezone", "UTC"))
    start = datetime.fromtimestamp(math.floor(now_unix) + 1, tz)
    return float(croniter(schedule["cron"], start).get_prev(datetime).timestamp())


def next_slot(schedule: dict[str, str], now_unix: float) -> float:
    """The first time after ``now_unix`` that the schedule matches (when a run would next start,
    unless the federation's previous run still runs then). Raises as latest_slot does."""
    tz = ZoneInfo(schedule.get("timezone", "UTC"))
    return float(croniter(schedule["cron"], datetime.fromtimestamp(now_unix, tz)).get_next(datetime).timestamp())


def schedule_problem(schedule: dict[str, str], now_unix: float) -> str:
    """Why the schedule cannot give a slot at ``now_unix``; empty while it is sound."""
    try:
        latest_slot(schedule, now_unix)
    except CroniterBadDateError:
        return f"cron {schedule.get('cron')!r} never fires"
    except ZoneInfoNotFoundError:
        return f"unknown time zone {schedule.get('timezone')!r}"
    except (KeyError, ValueError, TypeError) as e:  # a stored schedule that cannot be read
        return f"schedule {schedule!r} cannot be read: {type(e).__name__}"
    return ""


def slot_run_id(federation_id: str, slot_unix: float) -> str:
    stamp = datetime.fromtimestamp(slot_unix, UTC).strftime("%Y%m%d-%H%M")
    name = federation_id
    if len(name) > 48:
        name = f"{name[:41]}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return f"{name}-{stamp}"


class CronScheduler:
    def __init__(
        self,
        admin: AdminServices,
        holder: str,
        *,
        tick_s: float = 5.0,
        grace_s: float = 120.0,
        lease_ttl_s: float = 15.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.admin = admin
        self.state = admin.state
        self.holder = holder
        self.tick_s = tick_s
        self.grace_s = grace_s
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock or admin.clock
        self._task: asyncio.Task[None] | None = None
        self._broken: dict[str, str] = {}  # federation -> why its schedule cannot fire
        self._failing: dict[str, str] = {}  # federation -> why its last slot failed

    def tick(self) -> list[str]:
        """One pass over every scheduled federation, if this replica holds the lease; returns
        the runs it started. A federation whose schedule is broken, or whose slot fails, never
        stops the others."""
        now = self.clock()
        scheduled = [f for f in self.state.list_federations() if f.schedule]
        broken = self._check_schedules(scheduled, now)
        self._refresh_gauges(len(scheduled), len(broken))
        if not self.state.acquire_lease(LEASE, self.holder, self.lease_ttl_s, now):
            return []
        started = []
        for fed in scheduled:
            if fed.federation_id not in broken:
                run_id = self._fire_alone(fed, now)
                if run_id:
                    started.append(run_id)
        return started

    def _check_schedules(self, scheduled: list[FederationRecord], now: float) -> set[str]:
        """The federations whose schedule is broken; logs each once when it breaks and once
        when it is mended."""
        problems = {f.federation_id: schedule_problem(f.schedule, now) for f in scheduled}
        problems = {fid: p for fid, p in problems.items() if p}
        for fid, problem in problems.items():
            if self._broken.get(fid) != problem:
                log.error("federation %s: schedule broken, no run starts until it is changed: %s", fid, problem)
        for fid in self._broken.keys() - problems.keys():
            log.info("federation %s: schedule no longer broken", fid)
        self._broken = problems
        return set(problems)

    def _fire_alone(self, fed: FederationRecord, now: float) -> str:
        """``_fire``, with a failure logged once per federation and reason, not every tick."""
        fid = fed.federation_id
        try:
            run_id = self._fire(fed, now)
        except FedstreamError as e:
            if self._failing.get(fid) != e.public:
                log.warning("federation %s: scheduled run not started: %s", fid, e.public)
            self._failing[fid] = e.public
            return ""
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            if self._failing.get(fid) != reason:
                log.exception("federation %s: schedule failed; trying again each tick", fid)
            self._failing[fid] = reason
            return ""
        self._failing.pop(fid, None)
        return run_id

    def _refresh_gauges(self, scheduled: int, broken: int) -> None:
        """Fleet and schedule gauges, from the shared state (every replica reports the same)."""
        tenant = self.admin.tenant
        m.SCHEDULED_FEDERATIONS.labels(tenant).set(scheduled)
        m.SCHEDULES_BROKEN.labels(tenant).set(broken)
        counts = {"alive": 0, "stale": 0, "disabled": 0}
        for agent in self.state.list_agents():
            counts[self.admin.agents.status(agent)] += 1
        for status, n in counts.items():
            m.AGENTS_REGISTERED.labels(tenant, status).set(n)

    def _fire(self, fed: FederationRecord, now: float) -> str:
        slot = latest_slot(fed.schedule, now)
        if slot < fed.created_unix:
            return ""
        marker = f"{fed.federation_id}:{slot:.0f}"
        if self.state.is_marked("cron-slot", marker):
            return ""
        late = now - slot > self.grace_s
        if late and fed.schedule.get("missed", "skip") == "skip":
            if self.state.mark_once("cron-slot", marker):
                m.SCHEDULED_SLOTS.labels(self.admin.tenant, fed.federation_id, "missed").inc()
                log.warning("federation %s: slot %s missed (%.0f s late): skipped", fed.federation_id,
                            datetime.fromtimestamp(slot, UTC).isoformat(), now - slot)
            return ""
        running = [r.run_id for r in self.state.list_runs() if r.federation == fed.federation_id and r.state == RunState.RUNNING]
        if running:
            if self.state.mark_once("cron-slot", marker):
                m.SCHEDULED_SLOTS.labels(self.admin.tenant, fed.federation_id, "skipped_running").inc()
                log.warning("federation %s: slot %s skipped: run %s still runs", fed.federation_id,
                            datetime.fromtimestamp(slot, UTC).isoformat(), running[0])
            return ""
        run_id = slot_run_id(fed.federation_id, slot)
        try:
            self.admin.federations.start_run(
                fed.federation_id, run_id, trigger="schedule", by=Actor("schedule", fed.federation_id)
            )
        except AlreadyExists:
            self.state.mark_once("cron-slot", marker)
            return ""
        self.state.mark_once("cron-slot", marker)
        m.SCHEDULED_SLOTS.labels(self.admin.tenant, fed.federation_id, "started").inc()
        log.info("federation %s: scheduled run %s started%s", fed.federation_id, run_id,
                 f" ({now - slot:.0f} s late: missed slot run once)" if late else "")
        return run_id

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except FedstreamError as e:
                log.warning("schedules: %s", e.public)
            except Exception:
                log.exception("schedules: tick failed; trying again in %g s", self.tick_s)
            await asyncio.sleep(self.tick_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self.state.release_lease(LEASE, self.holder)
