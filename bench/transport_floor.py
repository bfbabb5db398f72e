"""The floor under the no-op round: the same bytes moved by bare gRPC Python, with nothing
verified, stored or folded. A server process sends 100 MB to each of 4 client processes and
receives 100 MB from each, in 1 MiB messages, all at once (timed from when all are connected).

With ``tls`` (as the no-op round runs) the server and the clients use what the services use:
mutual TLS with certificates of one authority (ECDSA P-256, as fedstream issues them), the
aggregator's server options (fixed 4 MiB stream windows, keepalive) and the agents' channel
options; without, plaintext.

Usage: python bench/transport_floor.py [--plaintext]   (run by bench/run.py noop)
       python bench/transport_floor.py serve DIR | client PORT DIR   (DIR: the identities, or -)
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

from fedstream.grpcutil import KEEPALIVE_OPTIONS, channel_credentials, server_credentials, server_options
from fedstream.memtune import tune_allocator
from fedstream.pki import CertificateAuthority, Identity, TlsIdentity

MESSAGES = 95  # 95 MiB, about the 100 MB of the no-op round's model
PAYLOAD = os.urandom(1 << 20)


def _identity(pki: str, name: str) -> TlsIdentity | None:
    return None if pki == "-" else TlsIdentity.load(Path(pki) / name)


def serve(pki: str) -> None:
    def download(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for _ in range(MESSAGES):
            yield PAYLOAD

    def upload(requests, context: grpc.ServicerContext) -> bytes:  # type: ignore[no-untyped-def]
        return str(sum(len(r) for r in requests)).encode()

    server = grpc.server(futures.ThreadPoolExecutor(16), options=server_options())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor", {
        "Download": grpc.unary_stream_rpc_method_handler(download),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    }),))
    identity = _identity(pki, "server")
    address = "127.0.0.1:0"
    port = (server.add_secure_port(address, server_credentials(identity)) if identity is not None
            else server.add_insecure_port(address))
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def client(port: str, pki: str) -> None:
    identity = _identity(pki, "client")
    target = f"127.0.0.1:{port}"
    ch = (grpc.secure_channel(target, channel_credentials(identity), options=KEEPALIVE_OPTIONS) if identity is not None
          else grpc.insecure_channel(target, options=KEEPALIVE_OPTIONS))
    grpc.channel_ready_future(ch).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    sum(len(m) for m in ch.unary_stream("/floor/Download")(b""))
    ch.stream_unary("/floor/Upload")(PAYLOAD for _ in range(MESSAGES))


def _make_pki(directory: Path) -> None:
    ca = CertificateAuthority.create("floor")
    day = dt.timedelta(days=1)
    ca.issue_identity(Identity("floor", "service", "server"), day, ("127.0.0.1",)).save(directory / "server")
    ca.issue_identity(Identity("floor", "agent", "client"), day).save(directory / "client")


def measure(agents: int = 4, repeats: int = 3, tls: bool = True) -> float:
    """Median seconds for ``agents`` clients to each download and upload the model at once."""
    with tempfile.TemporaryDirectory() as tmp:
        pki = "-"
        if tls:
            _make_pki(Path(tmp))
            pki = tmp
        return _measure(agents, repeats, pki)


def _measure(agents: int, repeats: int, pki: str) -> float:
    server = subprocess.Popen([sys.executable, __file__, "serve", pki], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        times = []
        for _ in range(repeats):
            clients = [
                subprocess.Popen([sys.executable, __file__, "client", port, pki], stdin=subprocess.PIPE,
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
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["client"]:
        client(sys.argv[2], sys.argv[3])
    else:
        tls = "--plaintext" not in sys.argv[1:]
        print(f"transport floor ({'mutual TLS' if tls else 'plaintext'}): {measure(tls=tls):.2f} s")
