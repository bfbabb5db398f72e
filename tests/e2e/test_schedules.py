"""Two scheduler processes on one real Redis: a federation scheduled every minute through the
REST admin API gets exactly one run for its slot, started by whichever replica holds the lease."""

from __future__ import annotations

import time

import httpx

from fedstream_testing.local import LocalFederation

TOKEN = "bootstrap-token-for-the-schedules-test"


def test_two_schedulers_start_each_slot_once(tmp_path, redis_url):
    with LocalFederation(tmp_path) as fed:
        agg = fed.start_aggregator({"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis_url})
        common = {"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis_url, "SCHEDULE_TICK_S": "1",
                  "API__BOOTSTRAP_TOKEN": TOKEN}
        for name in ("scheduler-a", "scheduler-b"):
            fed.start_scheduler(agg, common, name=name)
        url = fed.api_url("scheduler-a")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.time() + 30
        while httpx.get(f"{url}/federations", headers=headers, timeout=10).status_code != 200:
            assert time.time() < deadline, fed.tail("scheduler-a")
            time.sleep(0.2)
        body = {"federation_id": "every-minute", "schedule": {"cron": "* * * * *"},
                "spec": {"task": "digits", "min_agents": 5, "wait_for_agents_s": 600}}
        assert httpx.post(f"{url}/federations", json=body, headers=headers, timeout=10).status_code == 201

        # The other replica's API sees the federation (one Redis) and, within a minute, its run.
        other = fed.api_url("scheduler-b")
        deadline = time.time() + 75
        runs: list[dict] = []
        while not runs:
            assert time.time() < deadline, fed.tail("scheduler-a") + fed.tail("scheduler-b")
            time.sleep(0.5)
            runs = httpx.get(f"{other}/runs?federation=every-minute", headers=headers, timeout=10).json()["items"]
        time.sleep(3)  # both replicas tick a few more times
        fed.check_alive()
        runs = httpx.get(f"{other}/runs?federation=every-minute", headers=headers, timeout=10).json()["items"]
        first = runs[0]
        assert first["trigger"] == "schedule" and first["run_id"].startswith("every-minute-")
        logs = (tmp_path / "scheduler-a.log").read_text() + (tmp_path / "scheduler-b.log").read_text()
        assert logs.count(f"scheduled run {first['run_id']} started") == 1
