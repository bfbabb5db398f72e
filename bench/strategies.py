"""Aggregation throughput and memory per strategy, on this machine.

For linear strategies (FedAvg) with 10 and 100 agents and models of 10 and 100 MiB, and for the
robust statistics with 10 agents: each case runs in a fresh process that builds an aggregator
(in-process state, local model store) and feeds it every agent's update as verified chunks.
Printed per case: bytes folded per second by the fold alone, bytes ingested per second by the
whole path (chunk checks, spool, fold; for robust strategies: keeping the update, then the
piece-wise combine at commit), and peak resident memory above the process's baseline as a
multiple of the model size. The machine's memory-copy bandwidth is measured in the same run.

Usage: python bench/strategies.py        (part of make bench)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20
CASES = [
    ("fedavg", 10, 10), ("fedavg", 10, 100), ("fedavg", 100, 10), ("fedavg", 100, 100),
    ("median", 10, 10), ("trimmed-mean", 10, 10), ("multi-krum", 10, 10),
    ("median", 10, 100), ("trimmed-mean", 10, 100), ("multi-krum", 10, 100),
]


def copy_bandwidth() -> float:
    src = np.ones(64 * MiB, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def run_case(strategy: str, agents: int, mib: int) -> dict[str, float]:
    from fedstream import aggregation
    from fedstream.memtune import tune_allocator
    from fedstream.rounds import RoundPlan
    from fedstream.state import MemoryStateStore
    from fedstream.store import LocalModelStore
    from fedstream.tensors import Layout, iter_chunks
    from fedstream_aggregator.ingest import UpdateHeader
    from fedstream_aggregator.service import AggregatorService

    tune_allocator()
    n = max(1, mib // 4)
    layout = Layout.build((f"layer{i}.weight", "float32", (MiB,)) for i in range(n))
    arrays = [np.random.default_rng(i).standard_normal(MiB, dtype=np.float32) for i in range(n)]
    chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, [memoryview(a) for a in arrays])]
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalModelStore(Path(tmp) / "models", "bench")
        with store.writer("b/000000", layout, {}) as w:
            for a in arrays:
                w.write(memoryview(a))
            w.commit()
        agg = AggregatorService(MemoryStateStore(), store, Path(tmp) / "spool", chunk_bytes=MiB)
        names = tuple(f"a{i}" for i in range(agents))
        fold_seconds = 0.0
        original = aggregation.WeightedAccumulator.fold

        def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal fold_seconds
            start = time.perf_counter()
            original(self, *args, **kwargs)
            fold_seconds += time.perf_counter() - start

        aggregation.WeightedAccumulator.fold = timed  # type: ignore[method-assign]
        # Reset the kernel's peak mark: from here on, VmHWM is this round's peak.
        Path("/proc/self/clear_refs").write_text("5")
        baseline = vm_hwm()
        start = time.perf_counter()
        agg.open_round(RoundPlan("b", 1, "train", "b/000000", names, agents, time.time() + 3600, strategy, "{}"))
        for i, name in enumerate(names):
            agg.receive_update(UpdateHeader("b", 1, name, layout, 10 + i, {}), iter(chunks))
        while agg.snapshot("b", 1).state not in ("committed", "failed"):
            time.sleep(0.005)
        total = time.perf_counter() - start
        assert agg.snapshot("b", 1).state == "committed", agg.snapshot("b", 1).reason
        peak = vm_hwm()
        agg.close()
    volume = agents * layout.total_bytes
    return {
        "fold_bps": volume / fold_seconds if fold_seconds else 0.0,
        "ingest_bps": volume / total,
        "memory_x": (peak - baseline) / layout.total_bytes,
    }


def main() -> int:
    if sys.argv[1:2] == ["case"]:
        print(json.dumps(run_case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    bandwidth = copy_bandwidth()
    print(f"memory-copy bandwidth (numpy copyto, 64 MiB): {bandwidth / 1e9:.2f} GB/s; reproduce with: "
          ".venv/bin/python bench/strategies.py")
    print(f"{'strategy':13s} {'agents':>6s} {'model':>8s} {'fold GB/s':>10s} {'of copy':>8s} "
          f"{'ingest GB/s':>12s} {'peak mem':>9s}")
    for strategy, agents, mib in CASES:
        out = subprocess.run([sys.executable, __file__, "case", strategy, str(agents), str(mib)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        fold = f"{r['fold_bps'] / 1e9:10.2f}" if r["fold_bps"] else f"{'-':>10s}"
        share = f"{r['fold_bps'] / bandwidth:8.0%}" if r["fold_bps"] else f"{'-':>8s}"
        print(f"{strategy:13s} {agents:6d} {mib:5d} MiB {fold} {share} {r['ingest_bps'] / 1e9:12.2f} "
              f"{r['memory_x']:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
