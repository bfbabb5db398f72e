"""The admin API's limits on real servers: the scheduler's gRPC server and the API on one
asyncio loop, as the scheduler runs them. Bodies are refused before they are read, and a burst
of large requests does not hold up the agents' heartbeats on the same loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import REGISTRY

from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.server import SchedulerServer, build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import ApiSettings, SchedulerLimits, SchedulerSettings
from fedstream_testing.support import LoopThread

TENANT = "apilim"
MIB = 1 << 20
LIMIT = 256 * 1024  # api.max_body_bytes by default


@dataclass
class Stack:
    url: str
    api_port: int
    grpc: SchedulerServer
    token: str


@pytest.fixture
def stack() -> Iterator[Stack]:
    loop = LoopThread()
    settings = SchedulerSettings(heartbeat_interval_s=0.2, limits=SchedulerLimits(heartbeats_per_interval=0))
    service = SchedulerService(MemoryStateStore(TENANT), AggregatorClient("127.0.0.1:1"), settings)
    admin = AdminServices(service, None)  # type: ignore[arg-type]  # no model endpoint is called
    token = admin.tokens.create("admin", "limits")[1]

    async def build() -> tuple[SchedulerServer, ApiServer]:
        grpc_server = await build_server(service, "127.0.0.1", 0)
        api = ApiServer(build_api({TENANT: admin}, ApiSettings()), "127.0.0.1", 0)
        await api.start()
        return grpc_server, api

    grpc_server, api = loop.run(build())
    yield Stack(f"http://127.0.0.1:{api.port}/api/v1", api.port, grpc_server, token)
    loop.run(api.stop())
    loop.run(grpc_server.stop(0))
    loop.close()


def hits(limit: str) -> float:
    return REGISTRY.get_sample_value("fedstream_limit_hits_total",
                                     {"tenant": TENANT, "service": "scheduler", "limit": limit}) or 0.0


def big_body(size: int) -> bytes:
    """A federation spec padded to ``size`` bytes of JSON (a long list of numbers)."""
    head = b'{"federation_id": "big", "spec": {"task": "digits", "training": {"pad": ['
    n = (size - len(head) - 4) // 2
    return head + b",".join([b"1"] * n) + b"]}}}"


def post(stack: Stack, body: bytes, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(stack.url + "/federations", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("authenticated", [False, True])
def test_a_body_over_the_limit_is_refused_413_naming_the_limit(stack, authenticated):
    before = hits("max_body_bytes")

    r = post(stack, big_body(10 * MIB), stack.token if authenticated else None)

    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert "api.max_body_bytes" in r.json()["detail"] and str(LIMIT) in r.json()["detail"]
    assert hits("max_body_bytes") == before + 1


def test_a_chunked_body_is_cut_off_at_the_limit(stack):
    def chunks() -> Iterator[bytes]:
        yield from (b" " * 65536 for _ in range(160))  # 10 MiB, no Content-Length

    r = httpx.post(stack.url + "/federations", content=chunks(), timeout=30,
                   headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"})

    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["detail"]


def test_an_unauthenticated_body_is_answered_401_before_it_is_read(stack):
    # Headers announcing a body under the limit, then only a part of it: the answer must come
    # while the client still holds the rest back, so the server cannot have read the body.
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/federations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000\r\n\r\n" + b"[" * 1000)
        answer = sock.recv(65536)

    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_deeply_nested_json_is_refused_naming_the_limit(stack):
    body = json.dumps({"federation_id": "deep", "spec": {"task": "digits"}})[:-1].encode()
    body += b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    r = post(stack, body, stack.token)

    assert r.status_code == 400 and "api.max_json_depth" in r.json()["detail"]
    assert hits("max_json_depth") >= 1


def test_a_valid_body_still_works(stack):
    r = post(stack, json.dumps({"federation_id": "ok", "spec": {"task": "digits", "rounds": 1}}).encode(),
             stack.token)

    assert r.status_code == 201, r.text


def test_heartbeats_stay_prompt_while_large_requests_hit_the_api(stack):
    ch = channel(f"127.0.0.1:{stack.grpc.port}")
    stub = scheduler_pb2_grpc.AgentServiceStub(ch)
    stub.Register(scheduler_pb2.RegisterRequest(agent=scheduler_pb2.AgentInfo(agent_id="hb")), timeout=5)
    delays: list[float] = []
    done = threading.Event()

    def heartbeats() -> None:
        while not done.is_set():
            t = time.perf_counter()
            stub.Heartbeat(scheduler_pb2.HeartbeatRequest(agent_id="hb"), timeout=30)
            delays.append(time.perf_counter() - t)
            time.sleep(0.01)

    bodies = {size: big_body(size) for size in (10 * MIB, LIMIT - 1024)}  # made before, not while measuring

    def burst(size: int) -> None:
        for _ in range(3):
            post(stack, bodies[size], stack.token)

    beat = threading.Thread(target=heartbeats)
    beat.start()
    senders = [threading.Thread(target=burst, args=(size,)) for size in (10 * MIB, LIMIT - 1024) * 4]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    done.set()
    beat.join()
    ch.close()

    assert delays and max(delays) < 1.0, f"slowest heartbeat {max(delays):.3f} s"  # generous: see docs/benchmarks.md
