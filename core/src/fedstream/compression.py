"""Update compression on the wire: what an upload's layout looks like in each mode, and the
arithmetic of 8-bit quantization (pure numpy, shared by agents and the aggregator).

- ``none``: tensors as stored.
- ``float16`` / ``bfloat16``: floating tensors narrowed to 16 bits; others unchanged.
- ``int8``: each floating tensor travels as the change from the global model, quantized to
  int8 with one float32 scale per tensor (``<name>:scale``); the agent keeps its rounding
  error and adds it to the next round's change (error feedback). Others unchanged.
"""

from __future__ import annotations

import numpy as np

from fedstream.errors import InvalidArgument
from fedstream.tensors import Layout

MODES = ("none", "float16", "bfloat16", "int8")
SCALE_SUFFIX = ":scale"


def check_mode(mode: str) -> str:
    mode = mode or "none"
    if mode not in MODES:
        raise InvalidArgument(f"unknown compression {mode!r}; known: {', '.join(MODES)}")
    return mode


def wire_layout(base: Layout, mode: str) -> Layout:
    """The layout an upload must have for a model of layout ``base`` in ``mode``."""
    mode = check_mode(mode)
    if mode == "none":
        return base
    items: list[tuple[str, str, tuple[int, ...]]] = []
    for t in base.tensors:
        if not t.dt.is_float:
            items.append((t.name, t.dtype, t.shape))
        elif mode == "int8":
            items.append((t.name, "int8", t.shape))
            items.append((t.name + SCALE_SUFFIX, "float32", ()))
        else:
            items.append((t.name, mode, t.shape))
    return Layout.build(items)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Symmetric 8-bit quantization: (q, scale) with x ~ q * scale, |q| <= 127."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    scale = np.float32(peak / 127.0) if peak > 0 else np.float32(1.0)
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: float | np.floating) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)


def quantize_with_feedback(delta: np.ndarray, residual: np.ndarray | None) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """Quantizes ``delta`` plus the error left from last time; returns (q, scale, new error)."""
    target = delta.astype(np.float32) + (residual if residual is not None else 0)
    q, scale = quantize_int8(target)
    return q, scale, target - dequantize_int8(q, scale)
