"""Prometheus metrics of every service, scraped by a real Prometheus server (Debian's package)
during a federation on real Redis, and queried through its HTTP API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from fedstream_testing.local import LocalFederation

TOKEN = "bootstrap-token-for-the-metrics-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        jobs = "\n".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: ['{address}']" for name, address in targets.items()
        )
        config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}\n")
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        give_up = time.time() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.time() < give_up, "prometheus did not become ready"
            time.sleep(0.2)

    def eventually(self, query: str, check, timeout: float = 30) -> float:
        """The query's value once ``check`` holds for it (scrapes arrive every second or so;
        on a loaded machine one may time out), failing with the last value."""
        give_up = time.time() + timeout
        while True:
            value = self.value(query)
            if check(value) or time.time() > give_up:
                assert check(value), f"{query} = {value}"
                return value
            time.sleep(0.5)

    def value(self, query: str) -> float:
        result = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=10).json()
        assert result["status"] == "success", result
        series = result["data"]["result"]
        return sum(float(s["value"][1]) for s in series)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def test_prometheus_scrapes_every_service_during_a_federation(tmp_path, redis_url):
    assert shutil.which("prometheus"), "prometheus is missing: make test installs Debian's package"
    redis = {"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis_url}
    with LocalFederation(tmp_path / "services") as fed:
        agg = fed.start_aggregator(redis)
        fed.start_scheduler(agg, {**redis, "HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": TOKEN})
        sched = (tmp_path / "services" / "scheduler.port").read_text()
        for i in range(2):
            fed.start_agent(f"site-{i}", f"127.0.0.1:{sched}", i, 2, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        targets = {name: fed.metrics_address(name) for name in ("aggregator", "scheduler", "site-0", "site-1")}
        prom = Prometheus(tmp_path, targets)
        try:
            api, headers = fed.api_url(), {"Authorization": f"Bearer {TOKEN}"}
            give_up = time.time() + 30
            while httpx.get(f"{api}/agents?status=alive", headers=headers, timeout=10).json().get("items", []) == []:
                assert time.time() < give_up, fed.tail("scheduler")
                time.sleep(0.2)
            body = {"federation_id": "digits", "spec": {"task": "digits", "rounds": 2, "min_agents": 2,
                                                        "training": {"local_epochs": 1}}}
            assert httpx.post(f"{api}/federations", json=body, headers=headers, timeout=10).status_code == 201
            run = httpx.post(f"{api}/federations/digits/runs", json={}, headers=headers, timeout=10).json()
            give_up = time.time() + 180
            while (state := httpx.get(f"{api}/runs/{run['run_id']}", headers=headers, timeout=10).json())["state"] == "running":
                assert time.time() < give_up, fed.tail("scheduler")
                time.sleep(0.5)
            assert state["state"] == "succeeded", state

            fed_labels = 'tenant="default",federation="digits"'
            prom.eventually(f'fedstream_rounds_committed_total{{{fed_labels},kind="train"}}', lambda v: v == 2)
            prom.eventually(f'fedstream_rounds_started_total{{{fed_labels}}}', lambda v: v == 3)  # init + 2
            prom.eventually(f'fedstream_runs_finished_total{{{fed_labels},state="succeeded"}}', lambda v: v == 1)
            prom.eventually(f'fedstream_agents_selected_total{{{fed_labels}}}', lambda v: v == 5)  # 1 + 2 + 2
            prom.eventually(f'fedstream_round_duration_seconds_count{{{fed_labels}}}', lambda v: v == 3)
            prom.eventually(f'fedstream_last_committed_round_timestamp_seconds{{{fed_labels}}}', lambda v: v > time.time() - 300)
            prom.eventually('fedstream_agents{status="alive"}', lambda v: v == 2)
            prom.eventually("fedstream_agents_connected", lambda v: v == 2)
            prom.eventually('fedstream_updates_counted_total{kind="train"}', lambda v: v == 4)
            prom.eventually("fedstream_update_bytes_received_total", lambda v: v > 0)
            prom.eventually("fedstream_update_chunks_received_total", lambda v: v >= 5)
            prom.eventually("fedstream_model_bytes_sent_total", lambda v: v > 0)
            prom.eventually('fedstream_aggregation_seconds_count{strategy="fedavg"}', lambda v: v == 3)
            prom.eventually('fedstream_state_operation_seconds_count{backend="redis"}', lambda v: v > 0)
            prom.eventually('fedstream_store_operation_seconds_count{backend="local"}', lambda v: v > 0)
            prom.eventually('fedstream_agent_samples_total{task="digits"}', lambda v: v > 0)
            prom.eventually('fedstream_agent_train_seconds_count{task="digits"}', lambda v: v == 4)
            prom.eventually('fedstream_agent_rounds_total{outcome="done"}', lambda v: v == 5)
            prom.eventually("fedstream_updates_rejected_total", lambda v: v == 0)
            # Every service was scraped, all the while.
            prom.eventually("up", lambda v: v == 4)
        finally:
            prom.stop()
        fed.check_alive()
