"""How far one control plane goes on this machine: many agents connected over mutual TLS.

Lightweight simulated agents speak the real protocol from a few processes: each enrolls with
its own one-time token and key, holds its own TLS connection to the scheduler, registers,
heartbeats and keeps its assignment stream open; when assigned it downloads the base model
and uploads it back (a no-op update), over its own TLS connection to the aggregator. The
scheduler and the aggregator are separate processes, as deployed.

Phases:
  connect      all agents enrolled, registered and streaming; the scheduler's CPU and memory
               while they heartbeat (and the aggregator's, idle)
  fanout       one round with every agent selected: assignment delivery latency (the round's
               start at the scheduler to the agent holding its assignment), p50/p99
  rounds       a run of R rounds of S agents each, the others still heartbeating: every round
               committed with S updates, each counted once, no agent error; CPU and memory

Usage: python bench/scale.py [--agents 1000] [--workers 4] [--selected 200] [--rounds 10]
       [--hold 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil

from fedstream.errors import RoundClosed
from fedstream.grpcutil import KEEPALIVE_OPTIONS, channel, channel_credentials, error_code_of
from fedstream.store import LocalModelStore
from fedstream.tensors import Layout
from fedstream.transfer import download_model, upload_update
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_agent.identity import enroll
from fedstream_testing.local import LocalFederation
from fedstream_testing.sim_agent import changes

TASK = "scale"
SEED_VERSION = "seed/000000"


# The simulated agents (one asyncio loop per worker process).

def worker(agents: list[tuple[str, str]], cfg: dict, out: Path, stop: mp.Event, ready: mp.Value) -> None:
    asyncio.run(_worker(agents, cfg, out, stop, ready))


async def _worker(agents: list[tuple[str, str]], cfg: dict, out: Path, stop: mp.Event, ready: mp.Value) -> None:
    received: list[tuple[str, str, int, float]] = []
    errors: list[str] = []
    uploads: list[tuple[str, str, int, bool | None]] = []  # None: refused as late (not needed)
    sem = asyncio.Semaphore(32)  # enrollments at once: signing is the scheduler's CPU

    async def one(agent_id: str, token: str) -> None:
        try:
            async with sem:
                ident = await asyncio.to_thread(enroll, cfg["enroll"], cfg["ca"].encode(), token, agent_id, 120.0)
            ch = grpc.aio.secure_channel(cfg["scheduler"], channel_credentials(ident), options=KEEPALIVE_OPTIONS)
            stub = scheduler_pb2_grpc.AgentServiceStub(ch)
            reply = await stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(
                tasks=[TASK], capabilities=scheduler_pb2.Capabilities(device="cpu"))), timeout=120)
            beat = asyncio.create_task(heartbeat(stub, reply.heartbeat_interval_s))
            stream = stub.ReceiveAssignments(scheduler_pb2.ReceiveAssignmentsRequest())
            with ready.get_lock():
                ready.value += 1
            data_ch: grpc.Channel | None = None
            async for event in stream:
                a = event.assignment
                received.append((agent_id, a.run_id, a.round, time.time()))
                if data_ch is None:
                    data_ch = channel(a.upload_endpoint, ident)
                dup = await asyncio.to_thread(echo, data_ch, a)
                uploads.append((agent_id, a.run_id, a.round, dup))
            beat.cancel()
        except grpc.aio.AioRpcError as e:
            if not stop.is_set():
                errors.append(f"{agent_id}: {e.code().name}: {e.details()}")
        except grpc.RpcError as e:
            errors.append(f"{agent_id}: round: {e.code().name}: {e.details()}")

    async def heartbeat(stub: scheduler_pb2_grpc.AgentServiceStub, interval: float) -> None:
        await asyncio.sleep(interval * np.random.random())  # spread the fleet's beats
        while True:
            try:
                await stub.Heartbeat(scheduler_pb2.HeartbeatRequest(), timeout=10)
            except grpc.aio.AioRpcError as e:
                if not stop.is_set():
                    errors.append(f"{time.time():.1f} heartbeat: {e.code().name}")
            await asyncio.sleep(interval)

    tasks = [asyncio.create_task(one(a, t)) for a, t in agents]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"received": received, "errors": errors, "uploads": uploads}))


def echo(ch: grpc.Channel, a: scheduler_pb2.Assignment) -> bool | None:
    """The no-op update: the base model uploaded back (no change from it, in an asynchronous
    run); None when it was not needed (refused as late: the round closed without it)."""
    base = download_model(ch, a.run_id, a.base_version, timeout=120)
    out = changes(base.buffer, base.buffer) if a.training.upload_delta else base.buffer
    layout = out.layout
    view = memoryview(out.data)
    try:
        reply = upload_update(ch, timeout=120, run_id=a.run_id, round_=a.round, agent_id="", layout=layout,
                              buffers=[view[t.offset:t.end] for t in layout.tensors], num_examples=10, metrics={})
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION and error_code_of(e) == RoundClosed.code:
            return None
        raise
    return reply.duplicate


# The control plane and the measurements.

def usage(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """CPU (% of one core) over ``seconds`` and resident memory (MiB) at the end."""
    proc.cpu_percent(None)
    time.sleep(seconds)
    return proc.cpu_percent(None), proc.memory_info().rss / (1 << 20)


def connected(fed: LocalFederation) -> int:
    text = httpx.get(f"http://{fed.metrics_address('scheduler')}/metrics", timeout=10).text
    line = next((x for x in text.splitlines() if x.startswith("fedstream_agents_connected{")), "x 0")
    return int(float(line.split()[-1]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4, help="processes the simulated agents run in")
    p.add_argument("--selected", type=int, default=200, help="agents per round in the rounds phase")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--hold", type=float, default=30.0, help="seconds the connected fleet is measured")
    p.add_argument("--heartbeat", type=float, default=5.0, help="the scheduler's heartbeat interval (s)")
    p.add_argument("--model-kib", type=int, default=64, help="size of the model the rounds move")
    p.add_argument("--state", choices=["memory", "sqlite", "redis"], default="memory",
                   help="the control plane's state store: redis (a local redis-server, as deployed: the "
                   "aggregator then checks every agent's record on every call), sqlite (one file the "
                   "scheduler and aggregator share, the single-node default; it checks them too) or "
                   "in-process")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    figures: dict[str, object] = {"agents": args.agents, "state": args.state}
    with tempfile.TemporaryDirectory(prefix="fedstream-scale-") as tmp, LocalFederation(Path(tmp)) as fed:
        # sqlite: LocalFederation's own default, one file in its work directory.
        state: dict[str, str] = {"STATE__BACKEND": "memory"} if args.state == "memory" else {}
        redis = None
        if args.state == "redis":
            from fedstream_testing.servers import RedisServer

            redis = RedisServer(Path(tmp) / "redis").start()
            state = {"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis.url}
        try:
            return _measure(args, fed, Path(tmp), state, figures)
        finally:
            if redis is not None:
                fed.stop()
                redis.stop()


def _measure(args: argparse.Namespace, fed: LocalFederation, tmp: Path, state: dict[str, str],
             figures: dict[str, object]) -> int:
    n = args.model_kib * 256
    layout = Layout.build([("w", "float32", (n,))])
    store = LocalModelStore(Path(tmp) / "models", "default")
    with store.writer(SEED_VERSION, layout, {}) as w:
        w.write(memoryview(np.random.default_rng(0).standard_normal(n, dtype=np.float32)))
        w.commit()
    agg = fed.start_aggregator({"LOG__LEVEL": "WARNING", **state})
    sched = fed.start_scheduler(agg, {"LOG__LEVEL": "WARNING", "HEARTBEAT_INTERVAL_S": str(args.heartbeat),
                                      "HEARTBEAT_TTL_S": str(3 * args.heartbeat), **state})
    services = {name: psutil.Process(fed.pid(name)) for name in ("scheduler", "aggregator")}
    started = time.perf_counter()
    tokens = [(f"sim-{i:05d}", fed.enrollment_token(sched, f"sim-{i:05d}", ttl_s=3600)) for i in range(args.agents)]
    cfg = {"scheduler": sched, "enroll": fed.enroll_endpoint(sched), "ca": fed.operator.ca_pem.decode()}
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Value("i", 0)
    outs = [Path(tmp) / f"worker-{k}.json" for k in range(args.workers)]
    procs = [ctx.Process(target=worker, args=(tokens[k::args.workers], cfg, outs[k], stop, ready), daemon=True)
             for k in range(args.workers)]
    for proc in procs:
        proc.start()
    give_up = time.monotonic() + 600
    while connected(fed) < args.agents:
        fed.check_alive()
        if time.monotonic() > give_up:
            raise SystemExit(f"only {connected(fed)} of {args.agents} agents connected after 600 s")
        time.sleep(1)
    took = time.perf_counter() - started
    print(f"connect: {args.agents} agents enrolled (own key, one-time token), registered and streaming "
          f"over mutual TLS in {took:.0f} s from {args.workers} processes")
    time.sleep(args.heartbeat)  # every agent has heartbeated once
    cpu, rss = usage(services["scheduler"], args.hold)
    agg_cpu, agg_rss = services["aggregator"].cpu_percent(None), services["aggregator"].memory_info().rss / (1 << 20)
    still = connected(fed)
    print(f"connect: scheduler {cpu:.1f}% of a core, {rss:.0f} MiB RSS over {args.hold:.0f} s with {still} "
          f"agents connected and heartbeating every {args.heartbeat:g} s ({args.agents / args.heartbeat:.0f}/s); "
          f"aggregator idle {agg_rss:.0f} MiB")
    figures.update(connect_s=took, connected=still, scheduler_cpu_pct=cpu, scheduler_rss_mib=rss,
                   aggregator_idle_rss_mib=agg_rss, heartbeats_per_s=args.agents / args.heartbeat)
    del agg_cpu

    runs = scheduler_pb2_grpc.RunServiceStub(fed.channel(sched))

    def run(run_id: str, rounds: int, agents: int) -> scheduler_pb2.Run:
        runs.StartRun(scheduler_pb2.StartRunRequest(run_id=run_id, spec=scheduler_pb2.RunSpec(
            task=TASK, rounds=rounds, min_agents=agents, max_agents=agents, round_timeout_s=600,
            wait_for_agents_s=60, initial_version=SEED_VERSION,
            training=round_pb2.TrainingConfig(no_op=True))), timeout=30)
        final = None
        for final in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id), timeout=3600):  # noqa: B007
            pass
        assert final is not None
        return final

    for proc in services.values():
        proc.cpu_percent(None)
    t0 = time.perf_counter()
    fan = run("fanout", 1, args.agents)
    fan_s = time.perf_counter() - t0
    fan_cpu = {k: v.cpu_percent(None) for k, v in services.items()}
    for proc in services.values():
        proc.cpu_percent(None)
    t0 = time.perf_counter()
    many = run("rounds", args.rounds, args.selected)
    rounds_s = time.perf_counter() - t0
    rounds_cpu = {k: v.cpu_percent(None) for k, v in services.items()}
    rounds_rss = {k: v.memory_info().rss / (1 << 20) for k, v in services.items()}
    stop.set()
    for proc in procs:
        proc.join(60)
    results = [json.loads(o.read_text()) for o in outs if o.exists()]
    received = [r for res in results for r in res["received"]]
    errors = [e for res in results for e in res["errors"]]
    uploads = [u for res in results for u in res["uploads"]]
    started_at = {(run.run_id, r.round): r.started_unix for run in (fan, many) for r in run.rounds}

    def latencies(run_id: str) -> list[float]:
        return [t - started_at[(rid, rnd)] for _, rid, rnd, t in received if rid == run_id and (rid, rnd) in started_at]

    fan_lat = latencies("fanout")
    print(f"fanout: one round of {args.agents} agents, {fan_s:.1f} s to commit ({fan.rounds[-1].reason or 'committed'}): "
          f"assignment delivery p50 {1000 * percentile(fan_lat, 50):.0f} ms, p99 {1000 * percentile(fan_lat, 99):.0f} ms "
          f"over {len(fan_lat)} deliveries; scheduler {fan_cpu['scheduler']:.0f}%, aggregator {fan_cpu['aggregator']:.0f}% "
          f"of a core")
    train = [r for r in many.rounds if r.kind == round_pb2.ROUND_KIND_TRAIN]
    counted = [len(r.reports) for r in train]
    distinct = all(len({x.agent_id for x in r.reports}) == len(r.reports) for r in train)
    dup = sum(1 for *_, d in uploads if d)
    ok = (many.state == scheduler_pb2.RUN_STATE_SUCCEEDED and len(train) == args.rounds
          and all(c == args.selected for c in counted) and distinct and not errors and not dup)
    round_lat = latencies("rounds")
    print(f"rounds: {args.rounds} rounds x {args.selected} agents ({args.model_kib} KiB model) among {args.agents} "
          f"connected: {'OK' if ok else 'FAILED'}, run {scheduler_pb2.RunState.Name(many.state)}, updates counted per "
          f"round {counted}, each agent once per round: {distinct}, duplicates {dup}, agent errors {len(errors)}; "
          f"{rounds_s / max(1, args.rounds):.1f} s per round; assignment delivery p50 "
          f"{1000 * percentile(round_lat, 50):.0f} ms, p99 {1000 * percentile(round_lat, 99):.0f} ms; "
          f"scheduler {rounds_cpu['scheduler']:.0f}% / {rounds_rss['scheduler']:.0f} MiB, "
          f"aggregator {rounds_cpu['aggregator']:.0f}% / {rounds_rss['aggregator']:.0f} MiB")
    for e in errors[:10]:
        print(f"  agent error: {e}")
    figures.update(
        fanout_s=fan_s, fanout_p50_ms=1000 * percentile(fan_lat, 50), fanout_p99_ms=1000 * percentile(fan_lat, 99),
        fanout_scheduler_cpu_pct=fan_cpu["scheduler"], fanout_aggregator_cpu_pct=fan_cpu["aggregator"],
        rounds_ok=ok, rounds_s_per_round=rounds_s / max(1, args.rounds), rounds_counted=counted,
        rounds_p50_ms=1000 * percentile(round_lat, 50), rounds_p99_ms=1000 * percentile(round_lat, 99),
        rounds_scheduler_cpu_pct=rounds_cpu["scheduler"], rounds_aggregator_cpu_pct=rounds_cpu["aggregator"],
        rounds_scheduler_rss_mib=rounds_rss["scheduler"], rounds_aggregator_rss_mib=rounds_rss["aggregator"],
        agent_errors=len(errors), duplicates=dup,
    )
    print(f"Reproduce: .venv/bin/python bench/scale.py --agents {args.agents} --workers {args.workers} "
          f"--selected {args.selected} --rounds {args.rounds} --hold {args.hold:g} --state {args.state}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
