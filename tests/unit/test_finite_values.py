"""A version's writer refuses NaN and infinities wherever they sit in a long tensor, naming the
first one's element (the check goes piece by piece)."""

from __future__ import annotations

import numpy as np
import pytest

from fedstream.errors import NonFiniteResult
from fedstream.store.base import _FINITE_PIECE, FiniteValues
from fedstream.tensors import Layout

N = 3 * _FINITE_PIECE + 17


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("at", [0, _FINITE_PIECE - 1, _FINITE_PIECE, 2 * _FINITE_PIECE + 5, N - 1])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_the_first_non_finite_element_is_named_wherever_it_is(dtype, at, bad):
    layout = Layout.build([("ok", "float32", (4,)), ("w", dtype, (N,))])
    storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    values = np.zeros(N, dtype=storage)
    if dtype == "bfloat16":
        values[at] = 0x7FC0 if bad == "nan" else 0x7F80
        values[min(at + 3, N - 1)] = 0x7F80
    else:
        values[at] = float(bad)
        values[min(at + 3, N - 1)] = np.inf
    check = FiniteValues("v", layout)
    check.feed(memoryview(np.zeros(4, np.float32)).cast("B"))

    with pytest.raises(NonFiniteResult, match=f"tensor 'w' .*first at element {at}\\)"):
        check.feed(memoryview(values).cast("B"))


def test_finite_values_pass():
    layout = Layout.build([("w", "float32", (N,))])
    FiniteValues("v", layout).feed(memoryview(np.ones(N, np.float32)).cast("B"))
