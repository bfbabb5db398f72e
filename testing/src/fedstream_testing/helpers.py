"""Test helpers: random models in every dtype, their layouts and bytes, written to stores; the
project's console scripts run as processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedstream.aggregation import bf16_to_f32
from fedstream.store import ModelStore, ModelVersion
from fedstream.tensors import DTYPES, Layout

ALL_DTYPES = list(DTYPES)

# A model as tests make them: tensor name -> (dtype, raw elements in the dtype's storage form).
Model = dict[str, tuple[str, np.ndarray]]


def random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw elements in the dtype's storage form (bfloat16 as its uint16 bits)."""
    dt = DTYPES[dtype]
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype == "bfloat16":
        return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dt.is_float:
        return rng.standard_normal(shape).astype(dt.storage)
    info = np.iinfo(dt.storage)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt.storage)


def random_model(seed: int = 0, scale: int = 1) -> Model:
    """A small model with a tensor of every dtype, a scalar and an empty tensor."""
    rng = np.random.default_rng(seed)
    spec = {
        "conv.weight": ("float32", (8 * scale, 3, 3, 3)),
        "conv.bias": ("float32", (8 * scale,)),
        "bn.running_mean": ("float32", (8,)),
        "bn.num_batches_tracked": ("int64", ()),
        "half.weight": ("float16", (5, 7)),
        "bf.weight": ("bfloat16", (3, 11)),
        "double.weight": ("float64", (4,)),
        "i32": ("int32", (6,)),
        "i16": ("int16", (3,)),
        "i8": ("int8", (9,)),
        "u8": ("uint8", (2, 2)),
        "mask": ("bool", (13,)),
        "empty": ("float32", (0, 4)),
    }
    return {name: (dtype, random_array(rng, dtype, shape)) for name, (dtype, shape) in spec.items()}


def layout_of(model: Mapping[str, tuple[str, np.ndarray]]) -> Layout:
    return Layout.build((name, dtype, arr.shape) for name, (dtype, arr) in model.items())


def buffers_of(layout: Layout, model: Mapping[str, tuple[str, np.ndarray]]) -> list[memoryview]:
    return [np.ascontiguousarray(model[t.name][1]).data for t in layout.tensors]


def store_model(store: ModelStore, version: str, model: Model) -> ModelVersion:
    layout = layout_of(model)
    with store.writer(version, layout, {"test": "yes"}) as w:
        for buf in buffers_of(layout, model):
            w.write(buf)
        return w.commit()


def as_float(dtype: str, raw: np.ndarray) -> np.ndarray:
    if dtype == "bfloat16":
        return bf16_to_f32(raw).astype(np.float64)
    return raw.astype(np.float64)


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs one of the virtual environment's console scripts (``fedstream``, ``fedstream-agent``)."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)
