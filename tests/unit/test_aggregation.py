"""The streaming weighted average against a direct float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream import aggregation
from fedstream.aggregation import WeightedAccumulator, bf16_to_f32, f32_to_bf16, weighted_average
from fedstream.tensors import FlatBuffer
from fedstream_testing.helpers import as_float, buffers_of, layout_of, random_model


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


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.integers(1, 1000), min_size=2, max_size=6), split=st.integers(0, 6), seed=st.integers(0, 999))
def test_merged_partial_sums_equal_one_fold_of_everything(weights, split, seed):
    """What a root does with its leaves' sums gives what one accumulator gives."""
    updates = [flat(random_model(seed + i))[1] for i in range(len(weights))]
    layout = flat(random_model(seed))[0]
    whole, left, right, root = (WeightedAccumulator(layout) for _ in range(4))
    for i, (buf, w) in enumerate(zip(updates, weights, strict=True)):
        whole.fold(reader(buf), float(w))
        (left if i < split else right).fold(reader(buf), float(w))
    for part in (left, right):
        sums = FlatBuffer(part.sums_layout())
        for t, a in zip(part.sums_layout().tensors, part.sums(), strict=True):
            sums.write(t.offset, a.view(np.uint8).tobytes())
        root.merge(reader(sums), part.total_weight, part.count)

    assert (root.count, root.total_weight) == (whole.count, whole.total_weight)
    for (name, got), (_, want) in zip(root.average(), whole.average(), strict=True):
        dtype = layout.spec(name).dtype
        if layout.spec(name).dt.is_float:  # sums added in another order: a rounding apart
            tol = {"float16": 2e-3, "bfloat16": 1e-2}.get(dtype, 1e-5)
            np.testing.assert_allclose(as_float(dtype, got), as_float(dtype, want), rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_merge_refuses_inconsistent_partials():
    layout, _ = flat(random_model(1))
    acc = WeightedAccumulator(layout)
    for count, weight in ((1, 0.0), (0, 2.0), (-1, 1.0), (1, float("nan"))):
        with pytest.raises(ValueError, match="bad partial"):
            acc.merge(lambda offset, out: None, weight, count)
    acc.merge(lambda offset, out: None, 0.0, 0)  # an empty share adds nothing
    assert acc.count == 0


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


FLOAT_MAX = {"float16": 65504.0, "bfloat16": float(bf16_to_f32(np.array([0x7F7F], dtype=np.uint16))[0]),
             "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


def extreme_update(dtype: str, fractions: list[float]) -> tuple:
    """An update of one tensor whose values are the given fractions of the dtype's largest."""
    values = np.array(fractions, dtype=np.float64) * FLOAT_MAX[dtype]
    if dtype == "bfloat16":
        raw = f32_to_bf16(values.astype(np.float32))
        values = bf16_to_f32(raw).astype(np.float64)
    else:
        raw = values.astype(dtype)
        values = raw.astype(np.float64)
    layout = layout_of({"w": (dtype, raw)})
    buf = FlatBuffer(layout)
    buf.write(0, raw.view(np.uint8).tobytes())
    return layout, buf, values


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(["float16", "bfloat16", "float32", "float64"]),
    updates=st.lists(
        st.tuples(st.integers(1, 2**63), st.lists(st.sampled_from([1.0, -1.0, 0.999, -0.5, 0.0, 1e-30]),
                                                  min_size=3, max_size=3)),
        min_size=1, max_size=8,
    ),
)
def test_extreme_finite_updates_average_to_a_finite_mean(dtype, updates):
    """Values up to the dtype's largest, weighted by example counts up to 2^63, never overflow:
    the mean is finite and equals the exact weighted mean within the dtype's rounding."""
    folded = [extreme_update(dtype, fractions) for _, fractions in updates]
    acc = WeightedAccumulator(folded[0][0])
    for (_, buf, _), (weight, _) in zip(folded, updates, strict=True):
        acc.fold(reader(buf), float(weight))

    ((_, got),) = list(acc.average())
    total = sum(float(w) for w, _ in updates)
    # The reference mean, scaled so that float64 (whose maximum the values reach) cannot overflow.
    scale = FLOAT_MAX[dtype]
    want = scale * sum((v / scale) * (float(w) / total) for (_, _, v), (w, _) in zip(folded, updates, strict=True))
    got64 = as_float(dtype, got).astype(np.float64)
    assert np.isfinite(got64).all(), got64
    tol = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(got64, want, rtol=tol, atol=tol * FLOAT_MAX[dtype])


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.integers(1, 2**63), min_size=2, max_size=6), split=st.integers(0, 6),
       sign=st.sampled_from([1.0, -1.0]))
def test_merged_extreme_partials_stay_finite(weights, split, sign):
    """A root merging its leaves' states of values at float32's largest gets that value back."""
    layout, buf, _ = extreme_update("float32", [sign, sign, -sign])
    left, right, root = (WeightedAccumulator(layout) for _ in range(3))
    for i, w in enumerate(weights):
        (left if i < split else right).fold(reader(buf), float(w))
    for part in (left, right):
        state = FlatBuffer(part.sums_layout())
        state.write(0, part.sums()[0].view(np.uint8).tobytes())
        root.merge(reader(state), part.total_weight, part.count)

    ((_, got),) = list(root.average())
    np.testing.assert_allclose(got, np.array([sign, sign, -sign]) * FLOAT_MAX["float32"], rtol=1e-6)
