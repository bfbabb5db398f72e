"""Wire compression: layouts per mode and 8-bit quantization with error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.compression import (
    check_mode,
    dequantize_int8,
    quantize_int8,
    quantize_with_feedback,
    wire_layout,
)
from fedstream.errors import InvalidArgument
from fedstream.tensors import Layout

BASE = Layout.build([("w", "float32", (3, 2)), ("b", "float32", (2,)), ("n", "int64", ())])


def test_wire_layouts():
    assert wire_layout(BASE, "none") == BASE
    half = wire_layout(BASE, "float16")
    assert {t.name: t.dtype for t in half.tensors} == {"w": "float16", "b": "float16", "n": "int64"}
    q = wire_layout(BASE, "int8")
    assert {t.name: (t.dtype, t.shape) for t in q.tensors} == {
        "w": ("int8", (3, 2)), "w:scale": ("float32", ()), "b": ("int8", (2,)), "b:scale": ("float32", ()),
        "n": ("int64", ()),
    }
    with pytest.raises(InvalidArgument, match="unknown compression 'zip'"):
        check_mode("zip")


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(0, 50), magnitude=st.floats(1e-6, 1e3))
def test_int8_error_is_at_most_half_a_step(seed, size, magnitude):
    x = np.random.default_rng(seed).standard_normal(size).astype(np.float32) * magnitude
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and np.all(np.abs(q) <= 127)
    assert np.all(np.abs(dequantize_int8(q, scale) - x) <= scale / 2 * (1 + 1e-5))


def test_error_feedback_carries_what_rounding_lost():
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal(100).astype(np.float32) * 0.01 for _ in range(50)]
    residual = None
    sent = np.zeros(100, np.float32)
    for d in deltas:
        q, scale, residual = quantize_with_feedback(d, residual)
        sent += dequantize_int8(q, scale)
    # What was sent plus what is still owed equals everything that was to be sent.
    np.testing.assert_allclose(sent + residual, np.sum(deltas, axis=0), atol=1e-5)
