"""PyTorch state dicts to and from flat layouts, without extra copies of the model."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedstream.errors import InvalidLayout
from fedstream.tensors import FlatBuffer, Layout

TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
FROM_NAME = {v: k for k, v in TORCH_DTYPES.items()}


def layout_of(state: dict[str, torch.Tensor]) -> Layout:
    items = []
    for name, t in state.items():
        if t.dtype not in TORCH_DTYPES:
            raise InvalidLayout(f"tensor {name!r}: unsupported dtype {t.dtype}")
        items.append((name, TORCH_DTYPES[t.dtype], tuple(t.shape)))
    return Layout.build(items)


def buffers_of(layout: Layout, state: dict[str, torch.Tensor]) -> Iterator[memoryview]:
    """Each tensor's bytes in layout order, as views of CPU tensors (GPU tensors are copied
    to the CPU one at a time)."""
    for spec in layout.tensors:
        t = state[spec.name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.numel() == 0:
            yield memoryview(b"")
            continue
        yield t.view(torch.uint8).numpy().data.cast("B")


def state_of(buffer: FlatBuffer) -> dict[str, torch.Tensor]:
    """Tensors viewing the flat buffer (no copy), with their shapes and dtypes."""
    out: dict[str, torch.Tensor] = {}
    for spec in buffer.layout.tensors:
        dtype = FROM_NAME[spec.dtype]
        if spec.numel == 0:
            out[spec.name] = torch.empty(spec.shape, dtype=dtype)
            continue
        flat = torch.frombuffer(buffer.data, dtype=dtype, count=spec.numel, offset=spec.offset)
        out[spec.name] = flat.reshape(spec.shape)
    return out
