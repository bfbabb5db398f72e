"""Where the no-op round's time goes: runs the no-op round of bench/run.py (4 agents, a 100 MB
model, mutual TLS, separate processes) and prints each process's CPU seconds per round; with
``--perf`` (Linux ``perf`` installed, perf_event_paranoid allowing it) it also records the
aggregator and one agent with ``perf record -g`` and prints their hottest symbols (the kernel's
copies, libc's memmove, gRPC and TLS, CRC-32C, numpy).

Usage: python bench/noop_profile.py [--rounds 4] [--perf DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from fedstream.memtune import tune_allocator
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.benchmodels import MB, make_model, start_simulated_aggregator, store_model
from fedstream_testing.local import LocalFederation


def profile(rounds: int, agents: int, perf_dir: Path | None) -> None:
    layout, arrays = make_model(100 * MB)
    recorders: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = LocalFederation(work)
        try:
            store_model(work / "models", "seed/000000", layout, arrays)
            del arrays
            addr, pid = start_simulated_aggregator(procs)
            aggregator = psutil.Process(pid)
            sched_addr = procs.start_scheduler(addr, {"LOG__LEVEL": "WARNING"})
            watched = {"aggregator": aggregator, "scheduler": psutil.Process(procs.pid("scheduler"))}
            for i in range(agents):
                p = procs.start_agent(f"agent-{i}", sched_addr, i, agents, {"DEVICE": "cpu", "LOG__LEVEL": "WARNING"})
                watched[f"agent-{i}"] = psutil.Process(p.pid)
            time.sleep(3)
            before = {k: sum(p.cpu_times()[:2]) for k, p in watched.items()}
            if perf_dir is not None:
                perf_dir.mkdir(parents=True, exist_ok=True)
                for name in ("aggregator", "agent-0"):
                    recorders.append(subprocess.Popen(
                        ["perf", "record", "-F", "997", "-g", "-p", str(watched[name].pid), "-o",
                         str(perf_dir / f"{name}.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            runs = scheduler_pb2_grpc.RunServiceStub(procs.channel(sched_addr))
            run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=scheduler_pb2.RunSpec(
                task="digits", rounds=rounds, min_agents=agents, round_timeout_s=120,
                initial_version="seed/000000", wait_for_agents_s=120,
                training=round_pb2.TrainingConfig(no_op=True))), timeout=10)
            final = None
            for update in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run.run_id)):
                final = update
            after = {k: sum(p.cpu_times()[:2]) for k, p in watched.items()}
        finally:
            for r in recorders:
                r.send_signal(2)
                r.wait()
            procs.stop()
    assert final is not None and final.state == scheduler_pb2.RUN_STATE_SUCCEEDED, final
    times = [r.finished_unix - r.started_unix for r in final.rounds]
    print(f"rounds: {', '.join(f'{t:.2f}' for t in times)} s (median of 2..: {statistics.median(times[1:]):.2f} s)")
    print("CPU seconds per round: " + ", ".join(f"{k} {(after[k] - before[k]) / rounds:.2f}" for k in before))
    if perf_dir is not None:
        for name in ("aggregator", "agent-0"):
            out = subprocess.run(["perf", "report", "-i", str(perf_dir / f"{name}.data"), "--no-children",
                                  "--sort", "dso,sym", "--stdio", "-g", "none"], capture_output=True, text=True)
            top = [line for line in out.stdout.splitlines() if "%" in line and not line.startswith("#")][:15]
            print(f"{name}, hottest symbols:\n" + "\n".join(top))


if __name__ == "__main__":
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--perf", type=Path, help="record with perf into this directory")
    args = parser.parse_args()
    if args.perf is not None and shutil.which("perf") is None:
        parser.error("perf is not installed")
    profile(args.rounds, args.agents, args.perf)
