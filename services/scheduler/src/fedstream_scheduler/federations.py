"""Federations of one tenant: named run specs with an optional cron schedule, and starting
their runs warm from their newest pinned or latest model."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import ValidationError

from fedstream.errors import FailedPrecondition, InvalidArgument
from fedstream.ids import check_federation_id
from fedstream.rounds import RunState
from fedstream.state import FederationRecord, RunRecord, StateStore
from fedstream.store import ModelStore
from fedstream.strategies import make_strategy
from fedstream_scheduler.audit import SYSTEM, Actor
from fedstream_scheduler.models import RunSpec, check_asynchronous, check_privacy
from fedstream_scheduler.runs import RunService
from fedstream_scheduler.site_policy import check_releases, check_site_requests

MISSED_POLICIES = ("skip", "run_once")
# The longest gap between two matches of a five-field cron expression that matches at all:
# 29 February across a century year that is not a leap year (2096 to 2104). An expression with
# no match within this many years from now never matches.
FIRE_HORIZON_YEARS = 8


def check_schedule(schedule: dict[str, Any], now_unix: float) -> dict[str, Any]:
    """A schedule with its defaults filled in; raises InvalidArgument naming the bad field, and
    naming the expression when it never fires (no match within FIRE_HORIZON_YEARS of now)."""
    cron = schedule.get("cron", "")
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidArgument(f"schedule.cron: {cron!r} is not a five-field cron expression")
    tz = schedule.get("timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidArgument(f"schedule.timezone: unknown time zone {tz!r}") from None
    try:
        croniter(cron, datetime.fromtimestamp(now_unix, ZoneInfo(tz)),
                 max_years_between_matches=FIRE_HORIZON_YEARS).get_next(float)
    except CroniterError:
        raise InvalidArgument(
            f"schedule.cron: {cron!r} never fires (no match within {FIRE_HORIZON_YEARS} years in {tz})"
        ) from None
    missed = schedule.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        raise InvalidArgument(f"schedule.missed: must be one of {', '.join(MISSED_POLICIES)}, not {missed!r}")
    return {"cron": cron, "timezone": tz, "missed": missed}


def check_spec(fields: dict[str, Any]) -> RunSpec:
    """A validated run spec; raises InvalidArgument naming the bad field under ``spec.``."""
    try:
        return RunSpec.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidArgument(f"spec.{where}: {first['msg']}") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): objects merge key by key,
    recursively; a null value deletes its key; anything else (arrays included) replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def patched_spec(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The run spec ``current`` with ``patch`` merged in (``merge_patch``), except that a
    strategy's parameters belong to it: when the patch names another strategy, the old one's
    parameters are dropped (the patch's own, if any, then apply to the new one's defaults)."""
    strategy = patch.get("strategy")
    if isinstance(strategy, dict) and strategy.get("name") not in (None, (current.get("strategy") or {}).get("name")):
        current = {**current, "strategy": {k: v for k, v in (current.get("strategy") or {}).items() if k != "params"}}
    merged: dict[str, Any] = merge_patch(current, patch)
    return merged


def normalised(spec: RunSpec) -> dict[str, Any]:
    """The spec as stored: its strategy's parameters with their defaults filled in."""
    strategy = make_strategy(spec.strategy.name, spec.strategy.params)
    check_asynchronous(spec, strategy)
    check_privacy(spec, strategy)
    spec.strategy.params = strategy.params.model_dump()
    return spec.model_dump()


class FederationService:
    """Creates, changes and deletes federations, and starts their runs."""

    def __init__(
        self, state: StateStore, runs: RunService, store: ModelStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.runs = runs
        self.store = store
        self.clock = clock

    def create(self, federation_id: str, spec: dict[str, Any], description: str,
               schedule: dict[str, Any] | None, releases: dict[str, Any] | None = None,
               site_requests: dict[str, Any] | None = None) -> FederationRecord:
        """Raises InvalidArgument for a bad id, spec, schedule or policy, AlreadyExists for a taken id."""
        check_federation_id(federation_id)
        run_spec = check_spec(spec)
        now = self.clock()
        rec = FederationRecord(
            federation_id, normalised(run_spec), description,
            check_schedule(schedule, now) if schedule else {}, now, now,
            check_releases(releases) if releases else {},
            check_site_requests(site_requests) if site_requests else {},
        )
        self.state.create_federation(rec)
        return rec

    def update(self, federation_id: str, *, spec: dict[str, Any] | None = None,
               description: str | None = None, schedule: dict[str, Any] | None = None,
               clear_schedule: bool = False, releases: dict[str, Any] | None = None,
               site_requests: dict[str, Any] | None = None) -> FederationRecord:
        """Merges ``spec`` into the federation's as a JSON merge patch (RFC 7386, ``patched_spec``:
        nested blocks merge field by field, null deletes a field, which then takes its default),
        ``schedule`` field by field, and ``releases`` and ``site_requests`` as JSON merge patches
        too (a channel set to null is removed); raises FederationNotFound or InvalidArgument."""
        current = self.state.get_federation(federation_id)
        now = self.clock()
        changes: dict[str, Any] = {"updated_unix": now}
        if spec is not None:
            changes["spec"] = normalised(check_spec(patched_spec(current.spec, spec)))
        if description is not None:
            changes["description"] = description
        if clear_schedule:
            changes["schedule"] = {}
        elif schedule is not None:
            changes["schedule"] = check_schedule({**current.schedule, **schedule}, now)
        if releases is not None:
            changes["releases"] = check_releases(merge_patch(current.releases, releases))
        if site_requests is not None:
            changes["site_requests"] = check_site_requests(merge_patch(current.site_requests, site_requests))
        return self.state.update_federation(federation_id, **changes)

    def delete(self, federation_id: str) -> None:
        """Raises FailedPrecondition while one of its runs runs."""
        running = [r.run_id for r in self.runs_of(federation_id) if r.state == RunState.RUNNING]
        if running:
            raise FailedPrecondition(
                f"federation {federation_id!r} has a running run ({running[0]}); cancel it first"
            )
        self.state.delete_federation(federation_id)

    def runs_of(self, federation_id: str) -> list[RunRecord]:
        return [r for r in self.state.list_runs() if r.federation == federation_id]

    def latest_version(self, federation_id: str) -> str:
        """The newest model any run of the federation committed; empty when none has."""
        runs = [r for r in self.runs_of(federation_id) if r.latest_version]
        return max(runs, key=lambda r: (r.created_unix, r.run_id)).latest_version if runs else ""

    def pinned_version(self, federation_id: str) -> str:
        """The newest pinned model of the federation's runs; empty when none is pinned."""
        if self.store is None:
            return ""
        pinned = []
        for run in self.runs_of(federation_id):
            pinned += [(run.created_unix, v) for v in self.store.pinned(run.run_id)]
        return max(pinned)[1] if pinned else ""

    def start_run(self, federation_id: str, run_id: str = "", initial_version: str = "",
                  trigger: str = "api", by: Actor = SYSTEM) -> RunRecord:
        """Starts a run of the federation (audited as ``by``'s), warm-started from
        ``initial_version``, else the federation's newest pinned model, else its latest (an
        init round when it has none)."""
        fed = self.state.get_federation(federation_id)
        spec = dict(fed.spec)
        spec["initial_version"] = (
            initial_version or self.pinned_version(federation_id) or self.latest_version(federation_id)
            or spec.get("initial_version", "")
        )
        return self.runs.start_run(spec, run_id, federation=federation_id, trigger=trigger, by=by)
