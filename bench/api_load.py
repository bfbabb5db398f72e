"""The admin API under a burst of large requests, and what it costs the agents: gRPC heartbeat
latency to a scheduler whose gRPC services and admin API share one asyncio loop, as deployed.

The scheduler (gRPC server and admin API, one loop) runs in its own process; a load process
sends authenticated POSTs from several threads at once, alternately bodies of 10 MiB (over the
limit: refused from their Content-Length) and bodies just under api.max_body_bytes (read,
checked and parsed: the most a client can make the loop do); meanwhile this process sends a
heartbeat every 10 ms and times each one. Printed: heartbeat latency idle and under the burst
(p50, p99, max), and how many requests were answered with which status.

Usage: python bench/api_load.py [--seconds 10] [--clients 8] [--max-body-bytes 262144]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from fedstream.grpcutil import channel
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc

MIB = 1 << 20
TENANT = "bench"


def scheduler(max_body_bytes: int, ready: mp.Queue) -> None:
    asyncio.run(_scheduler(max_body_bytes, ready))


async def _scheduler(max_body_bytes: int, ready: mp.Queue) -> None:
    from fedstream.state import MemoryStateStore
    from fedstream.store import LocalModelStore
    from fedstream_scheduler.admin import AdminServices
    from fedstream_scheduler.aggregator_client import AggregatorClient
    from fedstream_scheduler.api import build_api
    from fedstream_scheduler.api.server import ApiServer
    from fedstream_scheduler.server import build_server
    from fedstream_scheduler.service import SchedulerService
    from fedstream_scheduler.settings import ApiSettings, SchedulerLimits, SchedulerSettings

    settings = SchedulerSettings(limits=SchedulerLimits(heartbeats_per_interval=0),
                                 api=ApiSettings(max_body_bytes=max_body_bytes))
    service = SchedulerService(MemoryStateStore(TENANT), AggregatorClient("127.0.0.1:1"), settings)
    admin = AdminServices(service, LocalModelStore(Path(tempfile.mkdtemp()), TENANT))
    token = admin.tokens.create("admin", "bench")[1]
    grpc_server = await build_server(service, "127.0.0.1", 0)
    api = ApiServer(build_api({TENANT: admin}, settings.api), "127.0.0.1", 0)
    await api.start()
    ready.put((grpc_server.port, api.port, token))
    await asyncio.Event().wait()


def body(size: int) -> bytes:
    """A federation spec padded to ``size`` bytes with a list of numbers (many small tokens: the
    costliest JSON to parse per byte)."""
    head = b'{"federation_id": "big", "spec": {"task": "digits", "training": {"pad": ['
    return head + b",".join([b"1"] * ((size - len(head) - 4) // 2)) + b"]}}}"


def load(url: str, token: str, sizes: list[int], clients: int, stop: mp.Event, out: mp.Queue) -> None:
    bodies = [body(size) for size in sizes]
    statuses: Counter[str] = Counter()

    def client(i: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with httpx.Client(timeout=60) as http:
            n = i
            while not stop.is_set():
                try:
                    statuses[str(http.post(url, content=bodies[n % len(bodies)], headers=headers).status_code)] += 1
                except httpx.TransportError as e:
                    statuses[type(e).__name__] += 1
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(statuses))


def heartbeats(stub: scheduler_pb2_grpc.AgentServiceStub, seconds: float) -> list[float]:
    delays = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="probe"), timeout=60)
        delays.append(time.perf_counter() - t)
        time.sleep(0.01)
    return delays


def figures(delays: list[float]) -> str:
    d = sorted(delays)
    return (f"p50 {1000 * d[len(d) // 2]:.1f} ms, p99 {1000 * d[int(len(d) * 0.99)]:.1f} ms, "
            f"max {1000 * d[-1]:.1f} ms ({len(d)} heartbeats)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="how long each phase is measured")
    p.add_argument("--clients", type=int, default=8, help="threads sending large requests at once")
    p.add_argument("--max-body-bytes", type=int, default=256 * 1024, help="the scheduler's api.max_body_bytes")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()
    server = ctx.Process(target=scheduler, args=(args.max_body_bytes, ready), daemon=True)
    server.start()
    grpc_port, api_port, token = ready.get(timeout=60)
    ch = channel(f"127.0.0.1:{grpc_port}")
    stub = scheduler_pb2_grpc.AgentServiceStub(ch)
    stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id="probe")), timeout=10)
    idle = heartbeats(stub, args.seconds)
    stop, out = ctx.Event(), ctx.Queue()
    sizes = [10 * MIB, args.max_body_bytes - 1024]
    loader = ctx.Process(target=load, args=(f"http://127.0.0.1:{api_port}/api/v1/federations", token, sizes,
                                            args.clients, stop, out))
    loader.start()
    time.sleep(1.0)  # the load process builds its bodies first
    busy = heartbeats(stub, args.seconds)
    stop.set()
    statuses = out.get(timeout=120)
    loader.join()
    server.terminate()
    ch.close()
    print(f"heartbeat, idle: {figures(idle)}")
    print(f"heartbeat, {args.clients} clients posting {sizes[0]} and {sizes[1]} byte bodies: {figures(busy)}")
    print(f"heartbeat delay under the burst (max busy - max idle): "
          f"{1000 * (max(busy) - max(idle)):.1f} ms; requests answered: {statuses}")
    print(f"Reproduce: .venv/bin/python bench/api_load.py --seconds {args.seconds:g} --clients {args.clients} "
          f"--max-body-bytes {args.max_body_bytes}")


if __name__ == "__main__":
    main()
