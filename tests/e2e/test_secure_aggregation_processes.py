"""Secure aggregation under central differential privacy with the services and agents as
processes behind mutual TLS: a digits run of three agents commits its first round with all
three, and its second with two after the third is SIGKILLed once its log says it shared its
keys (the round waits for it until its deadline, then the survivors unmask the sum); each
version's lineage holds its privacy and secure aggregation blocks, the second one naming the
agent that dropped."""

from __future__ import annotations

import os
import signal
import time

from fedstream.state import SQLiteStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.local import LocalFederation

SITES = ("site-0", "site-1", "site-2")
VICTIM = "site-2"


def wait_for_log(fed: LocalFederation, name: str, text: str, timeout: float = 180) -> None:
    give_up = time.monotonic() + timeout
    while text not in (fed.workdir / f"{name}.log").read_text(errors="replace"):
        assert time.monotonic() < give_up, f"{name} never logged {text!r}:\n{fed.tail(name, 40)}"
        time.sleep(0.05)


def wait_for_run(runs: scheduler_pb2_grpc.RunServiceStub, run_id: str, timeout: float = 240) -> scheduler_pb2.Run:
    give_up = time.monotonic() + timeout
    while (run := runs.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=10)).state == \
            scheduler_pb2.RUN_STATE_RUNNING:
        assert time.monotonic() < give_up, f"run {run_id} still running"
        time.sleep(0.5)
    return run


def test_a_private_secure_run_commits_with_an_agent_killed_after_the_key_exchange(tmp_path):
    spec = scheduler_pb2.RunSpec(
        task="digits", rounds=2, min_agents=3, min_updates=2, round_timeout_s=45, wait_for_agents_s=120,
        training=round_pb2.TrainingConfig(local_epochs=1, batch_size=64, seed=7),
        # Threshold 2 of 3: one participant may drop after sharing its keys.
        secure_aggregation=round_pb2.SecureAggregationSpec(max_dropout=0.34, clip_range=1.0, step_timeout_s=20),
        privacy=round_pb2.PrivacySpec(mode="central", clip_norm=1.0, noise_multiplier=0.5, epsilon_budget=1000,
                                      delta=1e-5),
    )
    with LocalFederation(tmp_path / "fed") as fed:
        aggregator = fed.start_aggregator()
        scheduler = fed.start_scheduler(aggregator, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for i, site in enumerate(SITES):
            # The victim trains slowly, so that it is killed between its key exchange and its upload.
            slow = {"SLOWDOWN": "30"} if site == VICTIM else {}
            fed.start_agent(site, scheduler, i, len(SITES), {"DEVICE": "cpu", "CPU_THREADS": "1", **slow})
        runs = scheduler_pb2_grpc.RunServiceStub(fed.channel(scheduler))

        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id="private-secure"), timeout=10)
        wait_for_log(fed, VICTIM, "secure aggregation: round 2 of private-secure: keys shared")
        os.kill(fed.pid(VICTIM), signal.SIGKILL)
        run = wait_for_run(runs, "private-secure")

        assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason + fed.tail("scheduler", 30)
        rounds = SQLiteStateStore(fed.state_file, "default").list_rounds("private-secure")
        assert [(r.round, r.state, len(r.reports)) for r in rounds] == [
            (0, "committed", 1), (1, "committed", 3), (2, "committed", 2)]
        assert sorted(r.agent_id for r in rounds[2].reports) == ["site-0", "site-1"]
        store = LocalModelStore(fed.workdir / "models", "default")
        first, second = (store.lineage(f"private-secure/{n:06d}") for n in (1, 2))
        assert first["secure_aggregation"]["uploaded"] == 3 and first["secure_aggregation"]["dropped"] == []
        block = second["secure_aggregation"]
        assert (block["shared_keys"], block["uploaded"], block["dropped"]) == (3, 2, [VICTIM])
        for lineage in (first, second):
            assert lineage["privacy"]["mode"] == "central" and lineage["privacy"]["epsilon"] > 0
            assert [p["examples"] for p in lineage["participants"]] == [0] * len(lineage["participants"])
