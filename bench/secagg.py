"""The cost of a secure aggregation round (SecAgg, complete graph, signed keys and consistency
check) for n agents: wall time per protocol step, bytes each agent sends and receives (protocol messages and the masked upload),
calls per agent, and the aggregator's CPU time, with a float32 model of --elements elements.

The aggregator runs in its own process (its CPU time measured there) on loopback gRPC; the
agents are threads of this process driving the real client (fedstream_agent.secagg) through
the real services; each agent signs with a certificate of one tenant authority made here, and
checks the n - 1 others' certificates and signatures (the aggregator, plaintext here, checks
none). Each agent masks with n PRG streams (its self mask and n - 1 pairwise
masks) of the model's size: its masking cost grows linearly in n, the round's quadratically.
With --dropouts k, k agents drop right after sharing their keys and the aggregator
reconstructs their keys and removes k * (n - k) pairwise masks.

Usage: python bench/secagg.py [--agents 10,100] [--elements 1000000] [--dropouts 0]
CI-sized check: python bench/secagg.py --agents 5 --elements 10000 --dropouts 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from fedstream.grpcutil import channel
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg.quantize import dequantize, error_bound, quantize
from fedstream.secagg.signing import Credentials
from fedstream.store import LocalModelStore
from fedstream.tensors import Layout
from fedstream.transfer import upload_update
from fedstream.v1 import aggregator_pb2_grpc
from fedstream_agent.secagg import SecureAggregationClient
from fedstream_testing.helpers import store_model
from fedstream_testing.secagg import Authority
from fedstream_testing.support import plan, wait_terminal

TENANT = "bench"
RUN = "run-secagg"
STEPS = ("advertise", "share_keys", "receive_shares", "masked_upload", "confirm", "unmask")


def aggregator(models: str, spool: str, ready: mp.Queue, stop: mp.Event) -> None:
    from fedstream.state import MemoryStateStore
    from fedstream_aggregator.server import build_server
    from fedstream_aggregator.service import AggregatorService

    service = AggregatorService(MemoryStateStore(TENANT), LocalModelStore(Path(models), TENANT), Path(spool),
                                chunk_bytes=1 << 20)
    server = build_server(service, "127.0.0.1", 0, max_workers=256)
    ready.put(server.port)
    stop.wait()
    server.stop(0)


def agent(ch, run: str, name: str, spec: SecureAggregationSpec, layout: Layout, change: np.ndarray, drop: bool,
          marks: dict[str, dict[str, float]], clients: dict[str, SecureAggregationClient],
          credentials: Credentials, names: list[str]) -> None:
    c = SecureAggregationClient(ch, run, 1, name, spec, credentials, names, give_up_unix=time.time() + 3600,
                                rpc_timeout_s=600)
    clients[name] = c
    t = marks.setdefault(name, {})
    c.advertise()
    t["advertise"] = time.perf_counter()
    c.share_keys()
    t["share_keys"] = time.perf_counter()
    if drop:
        return
    c.receive_shares()
    t["receive_shares"] = time.perf_counter()
    wire, pieces = c.masked(layout, {"w": change}, 10)
    upload_update(ch, timeout=3600, run_id=run, round_=1, agent_id=name, layout=wire, buffers=pieces,
                  num_examples=10, metrics={}, chunk_bytes=1 << 20)
    t["masked_upload"] = time.perf_counter()
    c.confirm()
    t["confirm"] = time.perf_counter()
    c.unmask()
    t["unmask"] = time.perf_counter()


def one_round(port: int, models: LocalModelStore, n: int, elements: int, dropouts: int, round_: int) -> None:
    spec = SecureAggregationSpec(max_dropout=0.3, clip_range=1.0, step_timeout_s=600)
    names = [f"agent-{i:03d}" for i in range(n)]
    run = f"{RUN}-{round_}"
    base = f"{run}/000000"
    store_model(models, base, {"w": ("float32", np.zeros(elements, np.float32))})
    layout = Layout.build([("w", "float32", (elements,))])
    ch = channel(f"127.0.0.1:{port}")
    control = aggregator_pb2_grpc.AggregatorControlStub(ch)
    p = plan(run, 1, names, base=base, timeout=3600, target_updates=n - dropouts, min_updates=min(spec.threshold(n), n - dropouts))
    p.secure_aggregation.max_dropout, p.secure_aggregation.clip_range = spec.max_dropout, spec.clip_range
    p.secure_aggregation.step_timeout_s = spec.step_timeout_s
    control.OpenRound(p, timeout=30)
    rng = np.random.default_rng(0)
    changes = {a: rng.normal(0, 0.01, elements) for a in names}
    marks: dict[str, dict[str, float]] = {}
    clients: dict[str, SecureAggregationClient] = {}
    authority = Authority(TENANT)
    credentials = {a: authority.credentials(a) for a in names}
    proc = psutil.Process(PORT_PID[port])
    cpu0 = sum(proc.cpu_times()[:2])
    start = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(ch, run, a, spec, layout, changes[a], i < dropouts, marks, clients,
                                                    credentials[a], names))
               for i, a in enumerate(names)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    event = wait_terminal(control, run, 1)
    wall = time.perf_counter() - start
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    report(n, elements, dropouts, event, marks, clients, start, wall, cpu, layout)
    check_error(models, event.version, {a: changes[a] for a in names[dropouts:]})
    ch.close()


def report(n, elements, dropouts, event, marks, clients, start, wall, cpu, layout) -> None:
    print(f"\n{n} agents, {elements} float32 elements, {dropouts} dropped after sharing keys: "
          f"round {'committed' if event.version else 'FAILED: ' + event.reason} in {wall:.2f} s")
    prev = 0.0
    for step in STEPS:
        done = [m[step] - start for m in marks.values() if step in m]
        if done:
            print(f"  {step:15s} all done at {max(done):8.2f} s  (step {max(done) - prev:7.2f} s)")
            prev = max(done)
    sent = [c.bytes_sent for c in clients.values()]
    received = [c.bytes_received for c in clients.values()]
    calls = [c.calls for c in clients.values()]
    upload = 8 * elements
    print(f"  per agent: protocol messages sent {np.mean(sent) / 1024:.1f} KiB, received "
          f"{np.mean(received) / 1024:.1f} KiB, {np.mean(calls):.1f} calls (+1 upload stream of {upload / 2**20:.2f} MiB, "
          f"the float32 model being {4 * elements / 2**20:.2f} MiB)")
    print(f"  aggregator: received {(sum(sent) + (n - dropouts) * upload) / 2**20:.2f} MiB, sent "
          f"{sum(received) / 2**20:.2f} MiB; CPU {cpu:.2f} s")
    print(f"  masking: {n} PRG streams of {elements} elements per agent; unmasking: {n - dropouts} self masks "
          f"+ {dropouts * (n - dropouts)} pairwise masks at the aggregator")


def check_error(models: LocalModelStore, version: str, changes: dict[str, np.ndarray]) -> None:
    with models.open(version) as reader:
        got = np.frombuffer(b"".join(c.data for c in reader.iter_chunks(1 << 20)), dtype=np.float32)
    exact = sum(changes.values()) / len(changes)
    err = np.abs(got.astype(np.float64) - exact)
    ring = sum(quantize(c, 10, 1.0) for c in changes.values())
    quant = np.abs(dequantize(ring) / (10 * len(changes)) - exact)
    print(f"  quantization error vs the float mean: max {quant.max():.3g}, RMS {np.sqrt(np.mean(quant**2)):.3g} "
          f"(bound {error_bound(10 * len(changes), len(changes)):.3g}); committed float32 model: max {err.max():.3g}")


PORT_PID: dict[int, int] = {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="10,100", help="comma-separated agent counts")
    ap.add_argument("--elements", type=int, default=1_000_000, help="float32 elements of the model")
    ap.add_argument("--dropouts", type=int, default=0, help="agents that drop right after sharing keys")
    args = ap.parse_args()
    print("command: python bench/secagg.py " + " ".join(sys.argv[1:]))
    tmp = Path(tempfile.mkdtemp(prefix="secagg-bench-"))
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=aggregator, args=(str(tmp / "models"), str(tmp / "spool"), ready, stop), daemon=True)
    proc.start()
    port = ready.get(timeout=120)
    PORT_PID[port] = proc.pid
    models = LocalModelStore(tmp / "models", TENANT)
    try:
        for i, n in enumerate(int(x) for x in args.agents.split(",")):
            one_round(port, models, n, args.elements, args.dropouts, i)
    finally:
        stop.set()
        proc.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
