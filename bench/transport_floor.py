"""The floor under the no-op round: the same bytes moved by bare gRPC Python, with nothing
verified, stored or folded. A server process sends 100 MB to each of 4 client processes and
receives 100 MB from each, in 1 MiB messages, all at once (timed from when all are connected).

Usage: python bench/transport_floor.py            (run by bench/run.py noop)
       python bench/transport_floor.py serve | client PORT
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent import futures

import grpc

from fedstream.memtune import tune_allocator

MESSAGES = 95  # 95 MiB, about the 100 MB of the no-op round's model
PAYLOAD = os.urandom(1 << 20)


def serve() -> None:
    def download(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for _ in range(MESSAGES):
            yield PAYLOAD

    def upload(requests, context: grpc.ServicerContext) -> bytes:  # type: ignore[no-untyped-def]
        return str(sum(len(r) for r in requests)).encode()

    server = grpc.server(futures.ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor", {
        "Download": grpc.unary_stream_rpc_method_handler(download),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def client(port: str) -> None:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    sum(len(m) for m in ch.unary_stream("/floor/Download")(b""))
    ch.stream_unary("/floor/Upload")(PAYLOAD for _ in range(MESSAGES))


def measure(agents: int = 4, repeats: int = 3) -> float:
    """Median seconds for ``agents`` clients to each download and upload the model at once."""
    server = subprocess.Popen([sys.executable, __file__, "serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        times = []
        for _ in range(repeats):
            clients = [
                subprocess.Popen([sys.executable, __file__, "client", port], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
                for _ in range(agents)
            ]
            for c in clients:
                c.stdout.readline()  # type: ignore[union-attr]
            start = time.perf_counter()
            for c in clients:
                c.stdin.write("go\n")  # type: ignore[union-attr]
                c.stdin.flush()  # type: ignore[union-attr]
            for c in clients:
                c.wait()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    tune_allocator()
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["client"]:
        client(sys.argv[2])
    else:
        print(f"transport floor: {measure():.2f} s")
