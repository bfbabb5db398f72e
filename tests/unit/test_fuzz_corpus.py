"""The fuzz target's invariants (fuzz/fuzz_wire.py) on its kept corpus, and on inputs that
hypothesis draws: the chunk decoder never raises, the layout parser raises only InvalidLayout,
the receiver hands its sink only sound chunks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
# The fuzz target is a script, not a package: loaded from its file.
_spec = importlib.util.spec_from_file_location("fuzz_wire", ROOT / "fuzz" / "fuzz_wire.py")
assert _spec is not None and _spec.loader is not None
fuzz_wire = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_wire)
one_input = fuzz_wire.one_input

CORPUS = sorted((ROOT / "fuzz" / "corpus").iterdir())


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_replays(path):
    one_input(path.read_bytes())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_inputs_keep_the_invariants(data):
    one_input(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 255), st.integers(0, 60), st.booleans()), max_size=8),
       st.randoms(use_true_random=False))
def test_structured_chunk_streams_keep_the_invariants(target, chunks, rng):
    data = bytes([target])
    for offset, size, good in chunks:
        data += bytes([offset, size, int(good)]) + bytes(rng.randrange(256) for _ in range(size))
    one_input(data)


def test_a_download_header_declaring_a_huge_model_is_refused_before_allocating():
    from fedstream.errors import ResourceExhausted
    from fedstream.tensors import Layout
    from fedstream.transfer import receive_model
    from fedstream.v1 import aggregator_pb2

    layout = Layout.build([("w", "float32", (1 << 40,))])  # 4 TiB declared: used to be a MemoryError
    header = aggregator_pb2.DownloadModelResponse(header=aggregator_pb2.ModelHeader(version="v", layout=layout.to_proto()))
    with pytest.raises(ResourceExhausted, match=r"declares 4398046511104 bytes.*at most 1024 \(max_model_bytes\)"):
        receive_model(iter([header]), max_bytes=1024)
    (ROOT / "fuzz" / "corpus").joinpath("download-huge-layout").read_bytes()  # kept in the corpus
