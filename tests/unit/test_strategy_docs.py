"""The user-defined strategy of docs/strategies.md works as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedstream.strategies import REGISTRY, make_strategy
from fedstream.tensors import TensorSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


@pytest.fixture
def example():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    yield namespace
    REGISTRY.pop("damped-sqrt", None)


def test_documented_strategy_registers_and_computes(example):
    strategy = make_strategy("damped-sqrt", {"damping": 0.25})
    spec = TensorSpec("w", "float32", (2,), 0, 8)

    out, state = strategy.server_update(spec, np.array([2.0, 4.0]), np.array([0.0, 0.0]), None)

    assert strategy.weight(16, {}) == 4.0
    np.testing.assert_allclose(out, [0.5, 1.0])
    assert state == {}
