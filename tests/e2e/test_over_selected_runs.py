"""Over-selection with the services and four real agents as processes: two agents slowed down
(FEDSTREAM_AGENT_SLOWDOWN), every round selects all four and commits on its two updates
(target_updates) without waiting for the slow ones, which stop cleanly (one INFO line, no
error); an upload after the close is refused as late and counted nowhere; the scheduler keeps
the measured speeds, the slow sites' far above the fast ones'."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from fedstream.errors import RoundClosed
from fedstream.grpcutil import channel, error_code_of
from fedstream.state import SQLiteStateStore
from fedstream.transfer import download_model, upload_update
from fedstream_testing.local import LocalFederation

BIN = Path(sys.executable).parent
FAST, SLOW = ("site-0", "site-1"), ("site-2", "site-3")
# The slow sites train thirty times as long as they measure: far longer than a round of the
# fast ones takes.
SLOWDOWN = "30"


def fedstream(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedstream"), *args], capture_output=True, text=True, timeout=timeout)


def wait_for_line(path: Path, text: str, seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while text not in path.read_text() and time.monotonic() < give_up:
        time.sleep(0.1)


def test_rounds_commit_on_their_target_and_the_slow_agents_stop_cleanly(tmp_path):
    with LocalFederation(tmp_path, tls=False) as procs:
        agg = procs.start_aggregator()
        sched = procs.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for i, name in enumerate(FAST + SLOW):
            slow = {"SLOWDOWN": SLOWDOWN} if name in SLOW else {}
            procs.start_agent(name, sched, i, 4, {"DEVICE": "cpu", "CPU_THREADS": "1", **slow})

        started = fedstream("grpc", "run-start", "--plaintext", "--scheduler", sched, "--task", "digits", "--rounds", "2",
                            "--min-agents", "4", "--target-updates", "2", "--round-timeout", "600",
                            "--wait-for-agents", "180", "--run-id", "os", "--follow")
        assert started.returncode == 0, started.stdout + started.stderr + procs.tail("scheduler", 60)
        ch = channel(agg)
        try:
            base = download_model(ch, "os", "os/000001", timeout=60)
            with pytest.raises(grpc.RpcError) as late:  # a slow site's update for round 2, after its close
                upload_update(ch, timeout=60, run_id="os", round_=2, agent_id=SLOW[0], layout=base.layout,
                              buffers=[memoryview(base.buffer.data)[t.offset : t.end] for t in base.layout.tensors],
                              num_examples=10, metrics={},
                              chunk_bytes=1 << 20)
        finally:
            ch.close()
        run = json.loads(fedstream("grpc", "run-get", "os", "--plaintext", "--scheduler", sched).stdout)
        # The last round's close reaches the slow agents with their next heartbeat (every 0.5 s),
        # which may come after the run ended.
        for name in SLOW:
            wait_for_line(tmp_path / f"{name}.log", "round 2 of run 'os' closed with its 2 updates", 30)
        procs.check_alive()
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in (*FAST, *SLOW, "aggregator", "scheduler")}
    state = SQLiteStateStore(tmp_path / "state.db")
    speeds = {a.agent_id: a.speeds["digits"] for a in state.list_agents() if "digits" in a.speeds}

    assert "round 2/2: committed os/000002" in started.stdout and "run os succeeded" in started.stdout
    training = [r for r in run["rounds"] if r["kind"] == "ROUND_KIND_TRAIN"]
    assert len(training) == 2
    for rnd in training:
        assert sorted(rnd["participants"]) == [*FAST, *SLOW]  # over-selected: all four
        assert sorted(r["agent_id"] for r in rnd["reports"]) == list(FAST)  # exactly the two first updates
        assert sorted(rnd["stragglers"]) == list(SLOW)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_code_of(late.value) == RoundClosed.code and "closed with its 2 updates" in late.value.details()
    for name in SLOW:
        log = logs[name]
        for n in (1, 2):
            assert f"round {n} of run 'os' closed with its 2 updates; this agent's work was not needed" in log, log
        assert "update uploaded" not in log
    for name, log in logs.items():
        assert " ERROR " not in log and "Traceback" not in log, f"{name}:\n{log[-3000:]}"
    assert "target_updates reached: 2 of 4 participants reported" in logs["aggregator"]
    assert min(speeds[a] for a in SLOW) > max(speeds[a] for a in FAST)
