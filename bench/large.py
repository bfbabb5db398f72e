"""A large model through one round: a 6 GiB model (one tensor past 4 GiB) downloaded by 4 agents,
their updates uploaded, folded into an accumulator kept on disk (the aggregator's memory budget
is far below it) and committed, on the local and the S3 model stores.

The aggregator is its own process, as deployed (mutual TLS, the embedded state store's memory
backend, since the agents are in no scheduler's registry). Each agent is a process that speaks
the real protocol without holding the model: it verifies the download chunk by chunk and
discards it, then uploads an update whose every value is its own constant, so that the
committed mean is known exactly and checked element by element when the version is read back.

Figures, per model store: the round's time (opened to committed), the peak resident memory of
every process (VmHWM: the aggregator, each agent, the S3 server, this driver), the aggregator's
bytes read from and written to storage (/proc/PID/io), the disk its files took at the peak.

Full size (needs about 70 GiB of free disk under --workdir and the machine to itself):
  python bench/large.py --size-gib 6 --agents 4 --budget-mib 1024
A small run (seconds): python bench/large.py --size-gib 0.25 --big-tensor-gib 0.125 --budget-mib 32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedstream.aggregation import f32_to_bf16
from fedstream.config import S3Settings
from fedstream.grpcutil import channel
from fedstream.pki import TlsIdentity
from fedstream.store import LocalModelStore, ModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.tensors import Chunk, ChunkReceiver, Layout, crc32c
from fedstream.transfer import download_call, upload_call
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc, round_pb2
from fedstream.wire import ChunkFrame
from fedstream_testing.local import LocalFederation
from fedstream_testing.servers import DiskS3Server

GiB, MiB = 1 << 30, 1 << 20
CHUNK = 1 * MiB
RUN = "large"


def make_layout(total: int, big: int, dtype: str) -> Layout:
    """One tensor of ``big`` bytes, the rest in 256 MiB tensors (a large model's shape)."""
    item = 2 if dtype == "bfloat16" else 4
    items = [("embed.weight", dtype, (big // item,))]
    rest, i = total - big, 0
    while rest > 0:
        n = min(256 * MiB, rest)
        items.append((f"layers.{i}.weight", dtype, (n // item,)))
        rest, i = rest - n, i + 1
    return Layout.build(items)


def constant_block(value: float, dtype: str, nbytes: int) -> bytes:
    values = np.full(nbytes // (2 if dtype == "bfloat16" else 4), value, dtype=np.float32)
    return (f32_to_bf16(values) if dtype == "bfloat16" else values).tobytes()


def frames(layout: Layout, block: bytes) -> Any:
    """Chunks of a model whose every element holds the same value (``block``: one chunk's bytes)."""
    crc = crc32c(block)
    total = layout.total_bytes
    for offset in range(0, total, CHUNK):
        data = block if offset + CHUNK <= total else block[: total - offset]
        yield ChunkFrame(Chunk(offset, data, crc if len(data) == CHUNK else crc32c(data)))


# The agents: one process each.

def agent(name: str, index: int, addr: str, pki: str, dtype: str, out: str) -> None:
    identity = TlsIdentity.load(Path(pki))
    ch = channel(addr, identity)
    started = time.perf_counter()
    responses = download_call(ch)(aggregator_pb2.DownloadModelRequest(run_id=RUN, version=f"{RUN}/000000"))
    first = next(responses)
    layout = Layout.from_proto(first.header.layout)
    receiver = ChunkReceiver(layout, lambda offset, data: None)  # verified, then dropped
    for msg in responses:
        receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
    receiver.finish()
    downloaded = time.perf_counter() - started
    header = aggregator_pb2.UploadUpdateRequest(header=aggregator_pb2.UpdateHeader(
        run_id=RUN, round=1, agent_id=name, layout=layout.to_proto(), num_examples=index + 1))

    def requests() -> Any:
        yield header
        yield from frames(layout, constant_block(index + 1, dtype, CHUNK))

    upload_call(ch)(requests(), timeout=3600)
    Path(out).write_text(json.dumps({
        "download_s": downloaded, "round_trip_s": time.perf_counter() - started,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


# The driver.

def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def io_bytes(pid: int) -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"])


def write_base(store: ModelStore, layout: Layout, dtype: str) -> None:
    with store.writer(f"{RUN}/000000", layout, {}) as w:
        for frame in frames(layout, constant_block(1.0, dtype, CHUNK)):
            w.write(frame.chunk.data)
        w.commit()


def check_mean(store: ModelStore, version: str, agents: int, dtype: str) -> None:
    """Every element of the committed version is the weighted mean of the agents' constants."""
    mean = sum((i + 1) ** 2 for i in range(agents)) / sum(i + 1 for i in range(agents))
    block = constant_block(mean, dtype, CHUNK)
    with store.open(version) as reader:
        for c in reader.iter_chunks(CHUNK):
            if bytes(c.data) != block[: len(c.data)]:
                raise SystemExit(f"{version}: wrong mean at byte {c.offset} (expected {mean} everywhere)")


class DiskPeak(threading.Thread):
    """The most disk the work directory took while the round ran (used space of its file system)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.base, self.peak, self.done = path, psutil.disk_usage(str(path)).used, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.peak = max(self.peak, psutil.disk_usage(str(self.path)).used - self.base)


def one_store(kind: str, args: argparse.Namespace, layout: Layout, work: Path) -> dict[str, Any]:
    fed = LocalFederation(work)
    # The S3 server keeps objects on the disk (rclone): moto, the tests' server, holds them in
    # memory and assembles a multipart object there several times over (killed for memory at 6 GiB).
    s3 = DiskS3Server(work / "s3").start("fedstream", "fedstream-secret") if kind == "s3" else None
    try:
        settings = {"LOG__LEVEL": args.aggregator_log_level, "STATE__BACKEND": "memory",
                    "ACCUMULATOR_MEMORY_BUDGET_BYTES": str(int(args.budget_mib * MiB))}
        if s3 is not None:
            s3_settings = S3Settings(endpoint=s3.endpoint, access_key="fedstream", secret_key="fedstream-secret",
                                     bucket="large", region="us-east-1")
            store: ModelStore = S3ModelStore(make_client(s3_settings), s3_settings, work / "staging", fed.tenant)
            store.ensure_bucket()
            settings |= {"STORE__BACKEND": "s3", "STORE__S3__ENDPOINT": s3.endpoint, "STORE__S3__ACCESS_KEY": "fedstream",
                         "STORE__S3__SECRET_KEY": "fedstream-secret", "STORE__S3__BUCKET": "large",
                         "STORE__S3__REGION": "us-east-1"}
        else:
            store = LocalModelStore(work / "models", fed.tenant)
        write_base(store, layout, args.dtype)
        addr = fed.start_aggregator(settings)
        return round_figures(kind, args, layout, fed, addr, store, work, s3)
    finally:
        fed.stop()
        if s3 is not None:
            s3.stop()


def round_figures(kind: str, args: argparse.Namespace, layout: Layout, fed: LocalFederation, addr: str,
                  store: ModelStore, work: Path, s3: DiskS3Server | None) -> dict[str, Any]:
    agg_pid = fed.pid("aggregator")
    names = [f"agent-{i}" for i in range(args.agents)]
    for name in names:
        identity = fed.identity("agent", name)
        assert identity is not None
        identity.save(work / "pki" / name)
    control = aggregator_pb2_grpc.AggregatorControlStub(channel(addr, fed.identity("service", "bench")))
    time.sleep(1.0)
    idle = psutil.Process(agg_pid).memory_info().rss
    Path(f"/proc/{agg_pid}/clear_refs").write_text("5")  # VmHWM from here: this round alone
    io_before = io_bytes(agg_pid)
    disk = DiskPeak(work)
    disk.start()
    started = time.perf_counter()
    control.OpenRound(aggregator_pb2.RoundPlan(
        run_id=RUN, round=1, kind=round_pb2.ROUND_KIND_TRAIN, base_version=f"{RUN}/000000",
        participants=names, min_updates=len(names), deadline_unix=time.time() + 7200), timeout=600)
    spawn = mp.get_context("spawn")  # this process holds gRPC channels: no fork
    procs = [spawn.Process(target=agent, args=(n, i, addr, str(work / "pki" / n), args.dtype, str(work / f"{n}.json")))
             for i, n in enumerate(names)]
    for p in procs:
        p.start()
    events = list(control.WatchRound(aggregator_pb2.WatchRoundRequest(run_id=RUN, round=1), timeout=7200))
    last = events[-1] if events else None  # the stream ends with the round
    if last is None or last.state != round_pb2.ROUND_STATE_COMMITTED:
        raise SystemExit(f"{kind}: the round did not commit: {last.reason if last else 'no event'}")
    version = last.version
    took = time.perf_counter() - started
    for p in procs:
        p.join()
    disk.done.set()
    failed = [n for n, p in zip(names, procs, strict=True) if p.exitcode != 0]
    if failed:
        raise SystemExit(f"{kind}: agents {', '.join(failed)} failed (their tracebacks are above)")
    io_after = io_bytes(agg_pid)
    agents = [json.loads((work / f"{n}.json").read_text()) for n in names]
    check_mean(store, version, args.agents, args.dtype)
    return {
        "store": kind, "round_s": took, "aggregator_idle_rss": idle, "aggregator_peak_rss": vm_hwm(agg_pid),
        "agent_peak_rss": [a["peak_rss"] for a in agents], "agent_download_s": [a["download_s"] for a in agents],
        "s3_server_peak_rss": vm_hwm(s3.proc.pid) if s3 is not None and s3.proc is not None else 0,
        "aggregator_read_bytes": io_after[0] - io_before[0], "aggregator_written_bytes": io_after[1] - io_before[1],
        "disk_peak_bytes": disk.peak,
    }


def report(fig: dict[str, Any], layout: Layout, args: argparse.Namespace) -> None:
    model = layout.total_bytes
    budget = args.budget_mib * MiB
    peak, idle = fig["aggregator_peak_rss"], fig["aggregator_idle_rss"]
    print(f"large ({fig['store']} store): {model / GiB:.2f} GiB {args.dtype} model (largest tensor "
          f"{max(t.nbytes for t in layout.tensors) / GiB:.2f} GiB), {args.agents} agents: round {fig['round_s']:.1f} s; "
          f"aggregator peak RSS {peak / MiB:.0f} MiB, {(peak - idle) / MiB:.0f} MiB above idle ({(peak - idle) / budget:.2f}x "
          f"its {args.budget_mib:.0f} MiB accumulator budget, {(peak - idle) / model:.2f}x the model); "
          f"agents' peak RSS {', '.join(f'{r / MiB:.0f}' for r in fig['agent_peak_rss'])} MiB"
          + (f"; S3 server peak RSS {fig['s3_server_peak_rss'] / MiB:.0f} MiB" if fig["s3_server_peak_rss"] else "")
          + f"; aggregator read {fig['aggregator_read_bytes'] / GiB:.2f} GiB and wrote "
          f"{fig['aggregator_written_bytes'] / GiB:.2f} GiB of storage; disk at the peak {fig['disk_peak_bytes'] / GiB:.1f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=6.0, help="model size")
    parser.add_argument("--big-tensor-gib", type=float, default=4.5, help="its largest tensor (past 4 GiB by default)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--budget-mib", type=float, default=1024, help="the aggregator's accumulator memory budget")
    parser.add_argument("--stores", default="local,s3", help="model stores to run on, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (default: the temporary directory)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--aggregator-log-level", default="WARNING", help="INFO logs each update's fold time")
    args = parser.parse_args()
    item = 2 if args.dtype == "bfloat16" else 4
    total = int(args.size_gib * GiB) // CHUNK * CHUNK
    big = min(total, int(args.big_tensor_gib * GiB) // item * item)
    layout = make_layout(total, big, args.dtype)
    figures = []
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"large-{kind}-") as tmp:
            fig = one_store(kind, args, layout, Path(tmp))
        report(fig, layout, args)
        figures.append(fig)
    print(f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"reproduce: python bench/large.py {' '.join(sys.argv[1:])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
