"""Streaming read and write of safetensors files: models at rest, never pickle.

The data section of a safetensors file is exactly a flat layout (see ``tensors.Layout``), so a
model can be written chunk by chunk as it arrives and read back in ranges without ever being
held whole in memory.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

from fedstream.errors import CorruptModel, InvalidLayout
from fedstream.tensors import Layout, TensorSpec, dtype_from_safetensors

# A header larger than this is refused before it is read (safetensors' own limit).
MAX_HEADER_BYTES = 100 << 20


def encode_header(layout: Layout, metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length prefix and JSON header, padded with spaces to 8-byte alignment. The
    metadata's keys are sorted: a version's file has the same bytes however its metadata
    travelled (a protobuf map has no order)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    for t in layout.tensors:
        header[t.name] = {
            "dtype": t.dt.safetensors,
            "shape": list(t.shape),
            "data_offsets": [t.offset, t.end],
        }
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def read_header(f: BinaryIO, what: str = "model") -> tuple[Layout, dict[str, str], int]:
    """Reads a safetensors header: (layout, metadata, offset of the data section).

    Raises CorruptModel when the header is malformed or its tensors do not tile the data.
    """
    prefix = f.read(8)
    if len(prefix) != 8:
        raise CorruptModel(f"{what}: file too short for a safetensors header")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise CorruptModel(f"{what}: header of {n} bytes exceeds {MAX_HEADER_BYTES}")
    raw = f.read(n)
    if len(raw) != n:
        raise CorruptModel(f"{what}: header truncated")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModel(f"{what}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CorruptModel(f"{what}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptModel(f"{what}: __metadata__ must map strings to strings")
    specs = []
    try:
        for name, entry in header.items():
            start, end = (int(x) for x in entry["data_offsets"])
            dt = dtype_from_safetensors(entry["dtype"])
            specs.append(TensorSpec(name, dt.name, tuple(int(s) for s in entry["shape"]), start, end - start))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptModel(f"{what}: malformed tensor entry in header ({e!r})") from None
    except InvalidLayout as e:
        raise CorruptModel(f"{what}: {e.public}") from None
    specs.sort(key=lambda t: (t.offset, t.end))
    layout = Layout(tuple(specs))
    try:
        layout.validate()
    except InvalidLayout as e:
        raise CorruptModel(f"{what}: {e.public}") from None
    return layout, metadata, 8 + n
