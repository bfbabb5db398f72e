"""The safetensors header a version is written with: the same bytes however its metadata travelled."""

from __future__ import annotations

import io

from fedstream.safetensors_io import encode_header, read_header
from fedstream.tensors import Layout


def test_metadata_in_any_order_gives_the_same_header_and_reads_back():
    layout = Layout.build([("w", "float32", (2, 3)), ("b", "bfloat16", (3,))])
    one = {"fedstream.run_id": "r", "fedstream.round": "2", "fedstream.kind": "train"}
    other = dict(reversed(list(one.items())))

    header = encode_header(layout, one)

    assert header == encode_header(layout, other)
    assert len(header) % 8 == 0
    read_layout, metadata, start = read_header(io.BytesIO(header + bytes(layout.total_bytes)))
    assert metadata == one and read_layout == layout and start == len(header)
