"""A site's own privacy budget with real agents (digits, PyTorch) against the real scheduler and
aggregator over gRPC: an agent whose privacy.max_epsilon allows exactly two local releases
takes part in a local-DP run's first two training rounds, records them in its ledger, and
declines the third (one warning naming its limit, nothing uploaded); the round commits at its
deadline with the other site's update, this site a straggler."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedstream.accounting import local_epsilon
from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_agent.agent import Agent
from fedstream_agent.budget import LEDGER_FILE
from fedstream_agent.settings import AgentPrivacySettings, AgentSettings, AgentTlsSettings
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_tasks.base import SiteDataSettings
from fedstream_testing.support import LoopThread

Z = 4.0
# At delta 1e-5 one, two and three releases of noise multiplier 4 spend 2.17, 3.19 and 4.01.
TWO_RELEASES = 3.5


@pytest.fixture
def scheduler(aggregator) -> Iterator[SchedulerServer]:
    loop = LoopThread()
    settings = SchedulerSettings(
        aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2, heartbeat_ttl_s=5.0,
    )

    async def build() -> SchedulerServer:
        service = SchedulerService(MemoryStateStore("t1"), AggregatorClient(settings.aggregator_endpoint), settings)
        return await build_server(service, "127.0.0.1", 0)

    server = loop.run(build())
    yield server
    loop.run(server.stop(0))
    loop.close()


def start_agent(agent_id: str, index: int, scheduler: SchedulerServer, identity_dir: Path,
                limit: float = 0.0) -> tuple[Agent, threading.Thread]:
    agent = Agent(AgentSettings(
        agent_id=agent_id, scheduler_endpoint=f"127.0.0.1:{scheduler.port}", device="cpu", cpu_threads=1,
        tls=AgentTlsSettings(insecure_plaintext=True, identity_dir=identity_dir), check_at_start=False,
        data=SiteDataSettings(site_index=index, num_sites=2), privacy=AgentPrivacySettings(max_epsilon=limit),
    ))
    thread = threading.Thread(target=agent.run, daemon=True, name=agent_id)
    thread.start()
    return agent, thread


def test_an_agent_declines_the_round_that_would_pass_its_own_limit(scheduler, tmp_path, caplog):
    runs = scheduler_pb2_grpc.RunServiceStub(channel(f"127.0.0.1:{scheduler.port}"))
    privacy = round_pb2.PrivacySpec(mode="local", clip_norm=0.01, noise_multiplier=Z, epsilon_budget=100.0,
                                    delta=1e-5)
    spec = scheduler_pb2.RunSpec(task="digits", rounds=3, min_agents=2, min_updates=1, round_timeout_s=20,
                                 wait_for_agents_s=30, privacy=privacy,
                                 training=round_pb2.TrainingConfig(seed=1, batch_size=64))
    ledger = tmp_path / "limited" / LEDGER_FILE
    caplog.set_level(logging.WARNING, logger="fedstream_agent.budget")
    started = [start_agent("limited", 0, scheduler, ledger.parent, TWO_RELEASES),
               start_agent("free", 1, scheduler, tmp_path / "free")]
    try:
        runs.StartRun(scheduler_pb2.StartRunRequest(spec=spec, run_id="run-local"), timeout=5)
        *_, run = runs.WatchRun(scheduler_pb2.GetRunRequest(run_id="run-local"), timeout=120)
    finally:
        for agent, thread in started:
            agent.shutdown()
            thread.join(timeout=30)
    limited, free = (agent for agent, _ in started)

    assert run.state == scheduler_pb2.RUN_STATE_SUCCEEDED, run.reason
    train = [r for r in run.rounds if r.kind == round_pb2.ROUND_KIND_TRAIN]
    assert [r.state for r in train] == [round_pb2.ROUND_STATE_COMMITTED] * 3
    assert [sorted(u.agent_id for u in r.reports) for r in train] == [["free", "limited"]] * 2 + [["free"]]
    assert list(train[2].stragglers) == ["limited"]
    assert limited.rounds_done + free.rounds_done == 1 + 2 + 3  # the init round is one agent's
    releases = json.loads(ledger.read_text())["releases"]
    assert [(r["run_id"], r["round"], r["noise_multiplier"]) for r in releases] == [("run-local", 1, Z), ("run-local", 2, Z)]
    assert releases[-1]["epsilon"] == pytest.approx(local_epsilon([Z, Z], 1e-5))
    assert releases[-1]["epsilon"] < TWO_RELEASES < local_epsilon([Z] * 3, 1e-5)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and r.name == "fedstream_agent.budget"]
    assert len(warnings) == 1 and "round 3 of run-local declined" in warnings[0]
    assert "privacy.max_epsilon=3.5" in warnings[0]
    assert not (tmp_path / "free" / LEDGER_FILE).exists()  # no identity, no limit: kept in memory
