"""Fixtures shared by all tiers: stores, and real gRPC servers bound to port 0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fedstream.state import MemoryStateStore  # noqa: E402
from fedstream.store import LocalModelStore  # noqa: E402


@pytest.fixture
def model_store(tmp_path: Path) -> LocalModelStore:
    return LocalModelStore(tmp_path / "models", tenant="t1")


@pytest.fixture
def state_store() -> MemoryStateStore:
    return MemoryStateStore("t1")
