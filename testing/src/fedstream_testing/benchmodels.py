"""Models the benchmarks move: float32 layouts of a given size, written to a local model store,
and an aggregator for simulated agents (shared by bench/run.py, noop_profile.py and fanout.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedstream.store import LocalModelStore
from fedstream.tensors import Layout
from fedstream_testing.local import LocalFederation

MB = 1_000_000
MiB = 1 << 20


def make_model(total_bytes: int, tensor_bytes: int = 4 * MiB, seed: int = 0) -> tuple[Layout, list[np.ndarray]]:
    """About ``total_bytes`` of float32 tensors of ``tensor_bytes`` each, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n = max(1, total_bytes // tensor_bytes)
    elems = total_bytes // n // 4
    layout = Layout.build((f"layer{i}.weight", "float32", (elems,)) for i in range(n))
    arrays = [rng.standard_normal(elems, dtype=np.float32) for _ in range(n)]
    return layout, arrays


def store_model(root: Path, version: str, layout: Layout, arrays: list[np.ndarray]) -> None:
    """Commits the model as ``version`` of the default tenant in the local store at ``root``."""
    store = LocalModelStore(root, "default")
    with store.writer(version, layout, {}) as w:
        for a in arrays:
            w.write(a.data)
        w.commit()


def start_simulated_aggregator(procs: LocalFederation) -> tuple[str, int]:
    """An aggregator for agents simulated in-process: they are in no scheduler's registry, so it
    keeps its own state. Returns its address and pid."""
    addr = procs.start_aggregator({"LOG__LEVEL": "WARNING", "STATE__BACKEND": "memory"})
    return addr, procs.pid("aggregator")
