"""Scheduled runs with an injectable clock on a real Redis: each slot fires once, whichever of
two schedulers ticks; missed slots follow the federation's policy; scheduled runs warm-start;
an expression that never fires is refused, and a broken stored schedule stops no other."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from prometheus_client import REGISTRY

from fedstream.state import FederationRecord, RunRecord
from fedstream.state.redis import RedisStateStore, connect
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.cron import CronScheduler, latest_slot, slot_run_id
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.support import LoopThread

PARIS = ZoneInfo("Europe/Paris")
# 02:00 in Paris on 2026-11-24 is 01:00 UTC.
SLOT = datetime(2026, 11, 24, 2, 0, tzinfo=PARIS).timestamp()
SPEC = {"task": "digits", "rounds": 1, "min_agents": 50, "wait_for_agents_s": 600}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas(redis_url) -> Iterator[tuple[LoopThread, Clock, list[CronScheduler]]]:
    loop = LoopThread()
    clock = Clock(SLOT - 86400 * 2)
    settings = SchedulerSettings(aggregator_endpoint="127.0.0.1:1")
    crons = []

    async def build() -> None:
        for i in range(2):
            service = SchedulerService(RedisStateStore(connect(redis_url), "t1"), AggregatorClient("127.0.0.1:1"),
                                       settings, clock=clock)
            crons.append(CronScheduler(AdminServices(service), f"replica-{i}", grace_s=120, lease_ttl_s=15,
                                       clock=clock))

    loop.run(build())
    yield loop, clock, crons
    for c in crons:
        for run in c.state.list_runs():
            if run.state == "running":
                loop.run(c.admin.runs.cancel_run(run.run_id))
        loop.run(c.admin.scheduler.close())
    loop.close()


def tick(loop: LoopThread, cron: CronScheduler) -> list[str]:
    async def go() -> list[str]:
        return cron.tick()

    return loop.run(go())


def nightly(cron: CronScheduler, fid: str = "nightly", missed: str = "skip") -> None:
    cron.admin.federations.create(fid, SPEC, "", {"cron": "0 2 * * *", "timezone": "Europe/Paris", "missed": missed})


def test_latest_slot_reads_the_cron_in_the_federations_time_zone():
    paris = {"cron": "0 2 * * *", "timezone": "Europe/Paris"}
    assert latest_slot(paris, SLOT) == SLOT
    assert latest_slot(paris, SLOT + 3599) == SLOT
    assert latest_slot(paris, SLOT - 1) == SLOT - 86400
    assert latest_slot({"cron": "0 2 * * *"}, SLOT) == SLOT - 86400 + 3600  # 02:00 UTC the day before
    assert slot_run_id("nightly", SLOT) == "nightly-20261124-0100"
    assert len(slot_run_id("x" * 63, SLOT)) <= 63


def test_each_slot_fires_once_whichever_replica_ticks(replicas):
    loop, clock, (a, b) = replicas
    nightly(a)
    clock.now = SLOT - 30
    assert tick(loop, a) == []  # last night's slot was missed (the federation existed): skipped
    assert not b.state.acquire_lease("cron", "replica-1", 15, clock.now)  # replica-0 leads
    clock.now = SLOT + 4  # replica-0's lease has lapsed: replica-1 takes over and fires
    assert tick(loop, b) == ["nightly-20261124-0100"]
    clock.now = SLOT + 5
    assert tick(loop, a) == [] and tick(loop, b) == []
    clock.now = SLOT + 40  # the lease lapses again: replica-0 finds the slot done
    assert tick(loop, a) == []
    run = a.state.get_run("nightly-20261124-0100")
    assert run.trigger == "schedule" and run.federation == "nightly"
    loop.run(a.admin.runs.cancel_run(run.run_id))
    clock.now = SLOT + 86400 + 10  # the next night, on replica-1
    assert tick(loop, b) == ["nightly-20261125-0100"]
    # Both racing on one slot: whatever the interleaving, one run.
    loop.run(a.admin.runs.cancel_run("nightly-20261125-0100"))
    a.state.create_run(RunRecord("nightly-20261126-0100", {}, state="succeeded", federation="other"))
    clock.now = SLOT + 2 * 86400 + 100
    assert tick(loop, a) == [] and tick(loop, b) == []  # the slot's run id exists: never a second


def test_a_missed_slot_is_skipped_or_run_once_by_policy(replicas):
    loop, clock, (a, _) = replicas
    nightly(a, "skipper", "skip")
    nightly(a, "catcher", "run_once")
    clock.now = SLOT + 3 * 86400 + 5 * 3600  # every replica was down three nights, found 5 h late
    assert tick(loop, a) == ["catcher-20261127-0100"]  # one run, for the latest slot only
    assert tick(loop, a) == []
    assert [r.run_id for r in a.state.list_runs()] == ["catcher-20261127-0100"]


def test_slots_before_creation_and_while_a_run_runs_do_not_fire(replicas):
    loop, clock, (a, _) = replicas
    clock.now = SLOT + 60
    nightly(a)  # created after tonight's slot
    assert tick(loop, a) == []
    async def by_hand() -> None:
        a.admin.federations.start_run("nightly", "by-hand")

    loop.run(by_hand())
    clock.now = SLOT + 86400 + 5
    assert tick(loop, a) == []  # by-hand still runs: the slot is skipped, and stays skipped
    loop.run(a.admin.runs.cancel_run("by-hand"))
    assert tick(loop, a) == []


def test_a_scheduled_run_warm_starts_from_the_federations_latest_model(replicas):
    loop, clock, (a, _) = replicas
    nightly(a)
    a.state.create_run(RunRecord("earlier", {}, state="succeeded", latest_version="earlier/000003",
                                 created_unix=clock.now, federation="nightly"))
    clock.now = SLOT + 1
    (run_id,) = tick(loop, a)
    assert a.state.get_run(run_id).spec["initial_version"] == "earlier/000003"
    assert datetime.fromtimestamp(SLOT, UTC).hour == 1


@pytest.fixture
def rest(replicas) -> Iterator[tuple[str, dict[str, str]]]:
    """The REST admin API over the first replica's services: its base URL and an admin's headers."""
    loop, _, (a, _) = replicas

    async def start() -> ApiServer:
        server = ApiServer(build_api({"t1": a.admin}), "127.0.0.1", 0)
        await server.start()
        return server

    server = loop.run(start())
    token = a.admin.tokens.create("admin", "admin token")[1]
    yield f"http://127.0.0.1:{server.port}/api/v1", {"Authorization": f"Bearer {token}"}
    loop.run(server.stop())


@pytest.mark.parametrize("cron_expr", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *"])
def test_an_expression_that_never_fires_is_refused_at_creation_and_update(replicas, rest, cron_expr):
    (_, _, (a, _)), (url, admin) = replicas, rest
    body = {"federation_id": "never", "spec": SPEC, "schedule": {"cron": cron_expr}}
    r = httpx.post(f"{url}/federations", json=body, headers=admin)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_argument" and repr(cron_expr) in r.json()["detail"], r.text
    assert "never fires" in r.json()["detail"] and a.state.list_federations() == []
    # Leap days fire (every four years, eight across 2100): accepted; changed to a date that
    # does not exist: refused, and the stored schedule is unchanged.
    body = {"federation_id": "leap", "spec": SPEC, "schedule": {"cron": "0 0 29 2 *"}}
    assert httpx.post(f"{url}/federations", json=body, headers=admin).status_code == 201
    r = httpx.patch(f"{url}/federations/leap", json={"schedule": {"cron": cron_expr}}, headers=admin)
    assert r.status_code == 400 and repr(cron_expr) in r.json()["detail"]
    assert a.state.get_federation("leap").schedule["cron"] == "0 0 29 2 *"


def test_a_broken_stored_schedule_never_stops_another_federation(replicas, rest, caplog):
    (loop, clock, (a, _)), (url, admin) = replicas, rest
    # Stored as an older release would have: a date that does not exist, a time zone now unknown.
    a.state.create_federation(FederationRecord("aaa-feb30", SPEC, "", {"cron": "0 0 30 2 *"}, clock.now, clock.now))
    a.state.create_federation(FederationRecord("aab-mars", SPEC, "", {"cron": "0 2 * * *", "timezone": "Mars/Olympus"},
                                               clock.now, clock.now))
    nightly(a)
    clock.now = SLOT + 1
    caplog.set_level(logging.INFO, logger="fedstream_scheduler.cron")
    assert tick(loop, a) == ["nightly-20261124-0100"]
    for i in range(3):
        clock.now = SLOT + 5 * (i + 2)
        assert tick(loop, a) == []
    broken_logs = [r.getMessage() for r in caplog.records if "schedule broken" in r.getMessage()]
    assert len(broken_logs) == 2, broken_logs  # once each, not every tick
    assert "'0 0 30 2 *' never fires" in broken_logs[0] and "'Mars/Olympus'" in broken_logs[1]
    assert REGISTRY.get_sample_value("fedstream_schedules_broken", {"tenant": "t1"}) == 2
    shown = {f["federation_id"]: f["schedule"]["broken"]
             for f in httpx.get(f"{url}/federations", headers=admin).json()["items"]}
    assert shown == {"aaa-feb30": "cron '0 0 30 2 *' never fires", "aab-mars": "unknown time zone 'Mars/Olympus'",
                     "nightly": None}
    # Mended through the API: no longer broken, no longer counted, said once.
    fixed = httpx.patch(f"{url}/federations/aab-mars", headers=admin,
                       json={"schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris"}})
    assert fixed.status_code == 200 and fixed.json()["schedule"]["broken"] is None
    tick(loop, a)
    tick(loop, a)
    assert REGISTRY.get_sample_value("fedstream_schedules_broken", {"tenant": "t1"}) == 1
    assert sum("aab-mars: schedule no longer broken" in r.getMessage() for r in caplog.records) == 1


def test_a_slot_that_fails_is_logged_once_and_stops_no_other(replicas, caplog):
    loop, clock, (a, _) = replicas
    # Stored without a task: every slot of it fails to start a run.
    paris = {"cron": "0 2 * * *", "timezone": "Europe/Paris"}
    a.state.create_federation(FederationRecord("aaa-no-task", {"rounds": 1}, "", paris, clock.now, clock.now))
    nightly(a)
    clock.now = SLOT + 1
    caplog.set_level(logging.WARNING, logger="fedstream_scheduler.cron")
    assert tick(loop, a) == ["nightly-20261124-0100"]
    for i in range(3):
        clock.now = SLOT + 5 * (i + 2)
        tick(loop, a)
    failed = [r.getMessage() for r in caplog.records if "aaa-no-task: scheduled run not started" in r.getMessage()]
    assert len(failed) == 1 and "task" in failed[0], failed
