"""fedstream benchmarks on loopback. Prints each figure with the command that reproduces it.

  upload     upload throughput of one 256 MiB model over one stream (MB/s)
  memory     aggregator peak resident memory while 8 agents upload a 128 MiB model at once,
             as a multiple of the model size above the aggregator's idle baseline
  settle     aggregator resident memory once requests are over: idle, after a round of 4
             uploads of a 128 MiB model commits, and after a burst of refused and abandoned
             uploads, each above idle as a multiple of the model size
  noop       wall time of a no-op round (agents return the global model unchanged) with 4
             agents and a 100 MB model, the three services as separate processes (median),
             beside bare gRPC moving the same bytes with the same TLS and options (the floor)

  side       the no-op round (as noop, 3 rounds, median of rounds 2-3) at 4 and 10 agents and 10
             and 100 MB, with the aggregator's peak resident memory as a multiple of the model

  fanout     the aggregator's CPU seconds and peak resident memory while 50 agents download a
             128 MiB model at once (bench/fanout.py --agents 50 --mib 1024 for the 1 GiB figure)

  s3         commit of a 512 MiB model to the S3 test server and read back (MB/s each way)
  redis      round state transition latency against a real redis-server (p50/p99 of 10,000)

Usage: python bench/run.py [upload|memory|settle|noop|side|fanout|s3|redis ...]   (make bench runs them all)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from fedstream.grpcutil import channel
from fedstream.memtune import tune_allocator
from fedstream.tensors import Layout
from fedstream.transfer import upload_update
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc, round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_testing.benchmodels import MB, MiB, make_model, start_simulated_aggregator, store_model
from fedstream_testing.local import LocalFederation


def start_aggregator(procs: LocalFederation) -> tuple[str, psutil.Process]:
    addr, pid = start_simulated_aggregator(procs)
    return addr, psutil.Process(pid)


def open_round(procs: LocalFederation, addr: str, run: str, participants: list[str], base: str, round_: int = 1) -> None:
    control = aggregator_pb2_grpc.AggregatorControlStub(channel(addr, procs.identity("service", "bench")))
    control.OpenRound(aggregator_pb2.RoundPlan(
        run_id=run, round=round_, kind=round_pb2.ROUND_KIND_TRAIN, base_version=base,
        participants=participants, min_updates=len(participants), deadline_unix=time.time() + 600,
    ), timeout=60)


def upload(procs: LocalFederation, addr: str, run: str, agent: str, layout: Layout, arrays: list[np.ndarray],
           round_: int = 1) -> float:
    ch = channel(addr, procs.identity("agent", agent))
    start = time.perf_counter()
    upload_update(ch, timeout=600, run_id=run, round_=round_, agent_id=agent, layout=layout,
                  buffers=[memoryview(a) for a in arrays], num_examples=10, metrics={})
    return time.perf_counter() - start


def bench_upload(rounds: int = 5) -> dict[str, float]:
    """One aggregator process, one upload per round; the first upload warms the process up
    (spool file, allocator), the median of the others is the steady-state figure. Over mutual
    TLS, as deployed, and in plaintext development mode for the cost of TLS."""
    out = {}
    for tls in (True, False):
        out["upload_mb_s" if tls else "upload_plaintext_mb_s"] = _bench_upload(rounds, tls)
    return out


def _bench_upload(rounds: int, tls: bool) -> float:
    layout, arrays = make_model(256 * MiB)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = LocalFederation(work, tls=tls)
        try:
            store_model(work / "models", "up/000000", layout, arrays)
            addr, _ = start_aggregator(procs)
            control = aggregator_pb2_grpc.AggregatorControlStub(channel(addr, procs.identity("service", "bench")))
            for r in range(1, rounds + 1):
                open_round(procs, addr, "up", ["a"], "up/000000", round_=r)
                took = upload(procs, addr, "up", "a", layout, arrays, round_=r)
                rates.append(layout.total_bytes / MB / took)
                # Let the round's commit finish, so that it does not compete with the next upload.
                for _ in control.WatchRound(aggregator_pb2.WatchRoundRequest(run_id="up", round=r)):
                    pass
        finally:
            procs.stop()
    med = statistics.median(rates[1:])
    print(f"upload ({'mutual TLS' if tls else 'plaintext'}): 256 MiB over one stream, each chunk verified, "
          f"spooled, then folded: median {med:.0f} MB/s over uploads 2..{rounds} (first upload of the process "
          f"{rates[0]:.0f} MB/s; all: {', '.join(f'{r:.0f}' for r in rates)})")
    return med


def bench_memory(agents: int = 8) -> dict[str, float]:
    layout, arrays = make_model(128 * MiB)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = LocalFederation(work)
        try:
            store_model(work / "models", "mem/000000", layout, arrays)
            addr, proc = start_aggregator(procs)
            time.sleep(1.0)
            baseline = proc.memory_info().rss
            # Reset the kernel's peak-RSS mark so VmHWM measures this round alone.
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            names = [f"agent-{i}" for i in range(agents)]
            open_round(procs, addr, "mem", names, "mem/000000")
            threads = [threading.Thread(target=upload, args=(procs, addr, "mem", n, layout, arrays)) for n in names]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - start
            peak = _vm_hwm(proc.pid)
        finally:
            procs.stop()
    ratio = (peak - baseline) / layout.total_bytes
    print(f"memory: {agents} concurrent uploads of a 128 MiB model: aggregator peak RSS "
          f"{peak / MiB:.0f} MiB, idle {baseline / MiB:.0f} MiB, peak above idle {ratio:.2f}x the model "
          f"({agents * layout.total_bytes / MB / took:.0f} MB/s aggregate)")
    return {"memory_peak_over_model": ratio}


def bench_settle(agents: int = 4, size: int = 128 * MiB) -> dict[str, float]:
    """Resident memory once requests are over: ``memory_after`` in fedstream_testing.memory."""
    from fedstream_testing.memory import memory_after

    with tempfile.TemporaryDirectory() as tmp:
        figures = memory_after(Path(tmp), agents, size)
    idle, model = figures["idle"], figures["model"]
    out = {f"settle_{k}_over_model": (v - idle) / model for k, v in figures.items() if k not in ("idle", "model")}
    print(f"settle: aggregator RSS idle {idle / MiB:.0f} MiB; after a committed round of {agents} uploads of a "
          f"{model / MiB:.0f} MiB model {figures['round'] / MiB:.0f} MiB ({out['settle_round_over_model']:+.2f}x the "
          f"model); after {agents * 4} refused and {agents} abandoned uploads {figures['burst'] / MiB:.0f} MiB "
          f"({out['settle_burst_over_model']:+.2f}x)")
    return out


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def noop_rounds(agents: int, model_bytes: int, rounds: int) -> dict[str, Any]:
    """No-op rounds of ``agents`` agent processes on a model of about ``model_bytes``: the
    median round after the first (which pays for the agents' connection set-up), every round's
    time, and the aggregator's peak resident memory (VmHWM) and its resident memory before
    the run."""
    layout, arrays = make_model(model_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = LocalFederation(work)
        try:
            store_model(work / "models", "seed/000000", layout, arrays)
            del arrays
            addr, agg = start_aggregator(procs)
            sched_addr = procs.start_scheduler(addr, {"LOG__LEVEL": "WARNING"})
            for i in range(agents):
                procs.start_agent(f"agent-{i}", sched_addr, i, agents, {
                    "DEVICE": "cpu",
                    "LOG__LEVEL": "WARNING",
                })
            idle = agg.memory_info().rss
            runs = scheduler_pb2_grpc.RunServiceStub(procs.channel(sched_addr))
            run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=scheduler_pb2.RunSpec(
                task="digits", rounds=rounds, min_agents=agents, round_timeout_s=300,
                initial_version="seed/000000", wait_for_agents_s=120,
                training=round_pb2.TrainingConfig(no_op=True),
            )), timeout=10)
            final = None
            for update in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run.run_id)):
                procs.check_alive()
                final = update
            peak = _vm_hwm(agg.pid)
        finally:
            procs.stop()
    assert final is not None and final.state == scheduler_pb2.RUN_STATE_SUCCEEDED, final
    times = [r.finished_unix - r.started_unix for r in final.rounds]
    return {"median_s": statistics.median(times[1:]), "times": times, "model_bytes": layout.total_bytes,
            "aggregator_peak_rss": peak, "aggregator_idle_rss": idle}


def bench_noop(agents: int = 4, rounds: int = 6) -> dict[str, float]:
    r = noop_rounds(agents, 100 * MB, rounds)
    med, times = r["median_s"], r["times"]
    from transport_floor import measure

    # The floor with what the round used: mutual TLS, the services' gRPC options (and plaintext, for TLS's share).
    floor, plain = measure(agents, tls=True), measure(agents, tls=False)
    print(f"noop: {agents} agents, {r['model_bytes'] / MB:.0f} MB model, separate processes, mutual TLS: "
          f"median round {med:.2f} s over rounds 2..{rounds} (all: {', '.join(f'{t:.2f}' for t in times)}); "
          f"bare gRPC moving the same bytes over mutual TLS: {floor:.2f} s ({med / floor:.1f}x), in plaintext: "
          f"{plain:.2f} s")
    return {"noop_round_s": med, "transport_floor_s": floor, "transport_floor_plaintext_s": plain}


# The side-by-side configurations: (agents, model MB).
SIDE = ((4, 100), (10, 100), (4, 10), (10, 10))


def bench_side(rounds: int = 3) -> dict[str, float]:
    """The no-op round at each of SIDE's sizes: median of rounds 2..3, and the aggregator's peak
    resident memory as a multiple of the model (all of it, and above its idle)."""
    out: dict[str, float] = {}
    for agents, mb in SIDE:
        r = noop_rounds(agents, mb * MB, rounds)
        model, peak, idle = r["model_bytes"], r["aggregator_peak_rss"], r["aggregator_idle_rss"]
        print(f"side: {agents} agents x {mb} MB, no-op, mutual TLS, {rounds} rounds: median round "
              f"{r['median_s']:.2f} s (all: {', '.join(f'{t:.2f}' for t in r['times'])}); aggregator peak RSS "
              f"{peak / MiB:.0f} MiB = {peak / model:.1f}x the model ({(peak - idle) / model:.1f}x above its "
              f"idle {idle / MiB:.0f} MiB)")
        out[f"side_{agents}x{mb}_round_s"] = r["median_s"]
        out[f"side_{agents}x{mb}_peak_x_model"] = peak / model
    return out


def bench_fanout(agents: int = 50, mib: int = 128) -> dict[str, float]:
    from fanout import report

    return report(agents, mib * MiB)


def bench_s3(size: int = 512 * MiB) -> dict[str, float]:
    """Commit of a 512 MiB model to the S3 test server (moto, on loopback) and read back."""
    from fedstream.config import S3Settings
    from fedstream.store.s3 import S3ModelStore, make_client
    from fedstream_testing.servers import S3Server

    layout, arrays = make_model(size, tensor_bytes=16 * MiB)
    server = S3Server().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = S3Settings(endpoint=server.endpoint, access_key="b", secret_key="b", bucket="bench")
            store = S3ModelStore(make_client(settings), settings, Path(tmp), "default")
            store.ensure_bucket()
            start = time.perf_counter()
            with store.writer("s3bench/000001", layout, {}) as w:
                for a in arrays:
                    w.write(memoryview(a))
                w.commit()
            put = time.perf_counter() - start
            start = time.perf_counter()
            with store.open("s3bench/000001") as reader:
                got = sum(len(c.data) for c in reader.iter_chunks())
            get = time.perf_counter() - start
            assert got == layout.total_bytes
            # The same bytes put by the bare SDK: what the server itself allows.
            raw = Path(tmp) / "raw.bin"
            with raw.open("wb") as f:
                for a in arrays:
                    f.write(memoryview(a))
            start = time.perf_counter()
            store.client.fput_object("bench", "raw.bin", str(raw), part_size=settings.part_bytes)
            bare = time.perf_counter() - start
    finally:
        server.stop()
    up, down = layout.total_bytes / MB / put, layout.total_bytes / MB / get
    print(f"s3: 512 MiB model to the S3 test server (moto on loopback): commit {up:.0f} MB/s "
          f"({put:.1f} s: staging, SHA-256, block CRCs, multipart upload), read back {down:.0f} MB/s "
          f"({get:.1f} s, every block verified); the bare SDK puts the same bytes at "
          f"{layout.total_bytes / MB / bare:.0f} MB/s")
    return {"s3_commit_mb_s": up, "s3_read_mb_s": down}


def bench_redis(transitions: int = 10_000) -> dict[str, float]:
    """Latency of round state transitions (WATCH/MULTI/EXEC) against a real redis-server."""
    from fedstream.rounds import RoundKind, RoundState
    from fedstream.state import RoundRecord
    from fedstream.state.redis import RedisStateStore, connect
    from fedstream_testing.servers import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            store = RedisStateStore(connect(server.url), "bench")
            latencies = []
            rnd = 0
            while len(latencies) < transitions:
                store.create_round(RoundRecord("bench", rnd, RoundKind.TRAIN, participants=["a", "b"]))
                for to in (RoundState.TRAINING, RoundState.AGGREGATING, RoundState.COMMITTED):
                    start = time.perf_counter()
                    store.transition_round("bench", rnd, to)
                    latencies.append(time.perf_counter() - start)
                rnd += 1
        finally:
            server.stop()
    lat = np.array(latencies[:transitions]) * 1000
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"redis: {transitions} round transitions (WATCH/MULTI/EXEC) on a local redis-server: "
          f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return {"redis_transition_p50_ms": p50, "redis_transition_p99_ms": p99}


BENCHES = {
    "upload": bench_upload,
    "memory": bench_memory,
    "settle": bench_settle,
    "noop": bench_noop,
    "fanout": bench_fanout,
    "side": bench_side,
    "s3": bench_s3,
    "redis": bench_redis,
}


def main() -> int:
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    args = parser.parse_args()
    print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"reproduce with: make bench  (or: .venv/bin/python bench/run.py {' '.join(args.names)})".rstrip())
    for name in args.names or list(BENCHES):
        try:
            BENCHES[name]()
        except grpc.RpcError as e:
            print(f"{name}: failed: {e.code().name}: {e.details()}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
