"""Many agents downloading one version at once: the aggregator's CPU seconds and peak resident
memory while ``agents`` simulated downloaders (real gRPC over mutual TLS, each its own
connection and agent identity, each chunk verified against its CRC-32C and dropped) fetch a
model of ``size`` bytes together. The downloaders run in a few processes of several threads.

Usage: python bench/fanout.py [--agents 50] [--mib 1024]   (bench/run.py fanout: 50 x 128 MiB)
       python bench/fanout.py client ADDRESS VERSION PKI FIRST COUNT   (one process of downloaders)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedstream.grpcutil import channel
from fedstream.memtune import tune_allocator
from fedstream.pki import CA_CERT, CA_KEY, CertificateAuthority, Identity, TlsIdentity
from fedstream.tensors import ChunkReceiver, Layout
from fedstream.transfer import download_call
from fedstream.v1 import aggregator_pb2 as pb

MiB = 1 << 20
PROCESSES = 5


def _download(address: str, version: str, identity: TlsIdentity, got: list[int]) -> None:
    responses = download_call(channel(address, identity))(
        pb.DownloadModelRequest(run_id=version.split("/")[0], version=version), timeout=3600
    )
    first = next(responses)
    receiver = ChunkReceiver(Layout.from_proto(first.header.layout), lambda offset, data: None)
    for msg in responses:
        receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
    receiver.finish()
    got.append(receiver.received)


def client(address: str, version: str, pki: str, first: int, count: int) -> None:
    """``count`` downloaders (agents ``first``..) in threads, started together on "go"."""
    ca = CertificateAuthority.load(Path(pki) / "ca" / CA_CERT, Path(pki) / "ca" / CA_KEY)
    identities = [ca.issue_identity(Identity(ca.tenant, "agent", f"fan-{first + i}"), dt.timedelta(days=1))
                  for i in range(count)]
    got: list[int] = []
    threads = [threading.Thread(target=_download, args=(address, version, ident, got)) for ident in identities]
    print("ready", flush=True)
    sys.stdin.readline()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(got), len(got), flush=True)


def measure(agents: int, size: int) -> dict[str, float]:
    """Starts an aggregator over a stored model of ``size`` bytes and lets ``agents``
    downloaders fetch it at once; returns the aggregator's figures."""
    import psutil

    from fedstream_testing.benchmodels import make_model, start_simulated_aggregator, store_model
    from fedstream_testing.local import LocalFederation

    layout, arrays = make_model(size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = LocalFederation(work)
        try:
            store_model(work / "models", "fan/000000", layout, arrays)
            del arrays
            addr, pid = start_simulated_aggregator(procs)
            proc = psutil.Process(pid)
            time.sleep(1.0)
            idle = proc.memory_info().rss
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            per = -(-agents // PROCESSES)
            clients = [
                subprocess.Popen([sys.executable, __file__, "client", addr, "fan/000000", str(procs.pki), str(first),
                                  str(min(per, agents - first))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
                for first in range(0, agents, per)
            ]
            for c in clients:
                c.stdout.readline()  # type: ignore[union-attr]
            cpu = sum(proc.cpu_times()[:2])
            start = time.perf_counter()
            for c in clients:
                c.stdin.write("go\n")  # type: ignore[union-attr]
                c.stdin.flush()  # type: ignore[union-attr]
            results = [c.stdout.readline().split() for c in clients]  # type: ignore[union-attr]
            took = time.perf_counter() - start
            cpu = sum(proc.cpu_times()[:2]) - cpu
            peak = _vm_hwm(proc.pid)
            for c in clients:
                c.wait()
        finally:
            procs.stop()
    done = sum(int(r[1]) for r in results if len(r) == 2)
    moved = sum(int(r[0]) for r in results if len(r) == 2)
    assert done == agents and moved == agents * layout.total_bytes, (done, moved)
    return {"seconds": took, "cpu_s": cpu, "peak": peak, "idle": idle, "model": layout.total_bytes}


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def report(agents: int, size: int) -> dict[str, float]:
    f = measure(agents, size)
    model = f["model"]
    print(f"fanout: {agents} agents download a {model / MiB:.0f} MiB model at once over mutual TLS: "
          f"{f['seconds']:.1f} s ({agents * model / 1e6 / f['seconds']:.0f} MB/s sent); aggregator "
          f"{f['cpu_s']:.1f} CPU s ({f['cpu_s'] / (agents * model / 2**30):.2f} s per GiB sent), peak RSS "
          f"{f['peak'] / MiB:.0f} MiB, idle {f['idle'] / MiB:.0f} MiB, peak above idle "
          f"{(f['peak'] - f['idle']) / model:.2f}x the model")
    return {"fanout_cpu_s": f["cpu_s"], "fanout_peak_over_model": (f["peak"] - f["idle"]) / model}


if __name__ == "__main__":
    tune_allocator()
    if sys.argv[1:2] == ["client"]:
        client(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--agents", type=int, default=50)
        parser.add_argument("--mib", type=int, default=1024, help="the model's size in MiB")
        args = parser.parse_args()
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        report(args.agents, args.mib * MiB)
