"""The streaming weighted average against a direct float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream import aggregation
from fedstream.aggregation import WeightedAccumulator, bf16_to_f32, f32_to_bf16, weighted_average
from fedstream.tensors import FlatBuffer
from helpers import as_float, buffers_of, layout_of, random_model


def reader(buf: FlatBuffer):
    def read_into(offset: int, out: memoryview) -> None:
        out[:] = buf.data[offset : offset + len(out)]

    return read_into


def flat(model):
    layout = layout_of(model)
    buf = FlatBuffer(layout)
    offset = 0
    for b in buffers_of(layout, model):
        n = memoryview(b).nbytes
        buf.write(offset, bytes(b))
        offset += n
    return layout, buf


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
    seed=st.integers(0, 10_000),
    piece=st.sampled_from([8, 64, 4 << 20]),
)
def test_fold_matches_reference_average(weights, seed, piece):
    updates = [random_model(seed + i) for i in range(len(weights))]
    layout, _ = flat(updates[0])
    acc = WeightedAccumulator(layout)
    old = aggregation.FOLD_PIECE_BYTES
    aggregation.FOLD_PIECE_BYTES = piece
    try:
        for model, w in zip(updates, weights, strict=True):
            _, buf = flat(model)
            acc.fold(reader(buf), float(w))
    finally:
        aggregation.FOLD_PIECE_BYTES = old

    result = dict(acc.average())

    for t in layout.tensors:
        ref = weighted_average([(as_float(t.dtype, m[t.name][1]).reshape(-1), w) for m, w in zip(updates, weights, strict=True)])
        got = result[t.name]
        assert got.dtype == t.dt.storage
        if t.dtype == "bool":
            np.testing.assert_array_equal(got, ref >= 0.5)
        elif not t.dt.is_float:
            np.testing.assert_array_equal(got, np.rint(ref).astype(t.dt.storage))
        else:
            tol = {"float32": 1e-5, "float64": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[t.dtype]
            np.testing.assert_allclose(as_float(t.dtype, got), ref, rtol=tol, atol=tol)


def test_single_update_averages_to_itself():
    model = random_model(7)
    layout, buf = flat(model)
    acc = WeightedAccumulator(layout)
    acc.fold(reader(buf), 3.0)

    result = dict(acc.average())

    for t in layout.tensors:
        if t.dtype in ("float32", "float16", "bfloat16", "float64"):
            np.testing.assert_allclose(as_float(t.dtype, result[t.name]), as_float(t.dtype, model[t.name][1].reshape(-1)), rtol=1e-6)
        else:
            np.testing.assert_array_equal(result[t.name], model[t.name][1].reshape(-1))


def test_weights_must_be_positive_and_an_update_is_needed():
    layout, buf = flat(random_model(1))
    acc = WeightedAccumulator(layout)
    with pytest.raises(ValueError, match="no update"):
        list(acc.average())
    with pytest.raises(ValueError, match="positive"):
        acc.fold(reader(buf), 0.0)


def test_accumulator_is_one_model_in_size():
    model = random_model(0, scale=64)
    layout, _ = flat(model)
    acc = WeightedAccumulator(layout)
    # float32 accumulators for float tensors; float64 only for the few integer and bool ones.
    assert acc.nbytes <= 1.2 * layout.total_bytes + 1024


@pytest.mark.parametrize(
    "value, bits",
    [(1.0, 0x3F80), (-2.0, 0xC000), (1.00390625, 0x3F80), (1.01171875, 0x3F82), (float("inf"), 0x7F80)],
)
def test_bf16_rounds_to_nearest_even(value, bits):
    assert int(f32_to_bf16(np.array([value], dtype=np.float32))[0]) == bits


def test_bf16_nan_stays_nan_and_roundtrips():
    bits = f32_to_bf16(np.array([np.nan, 0.5], dtype=np.float32))
    back = bf16_to_f32(bits)
    assert np.isnan(back[0]) and back[1] == 0.5
