"""Builds the state store and model store that settings name: the only place that chooses."""

from __future__ import annotations

from fedstream.config import StateSettings, StoreSettings
from fedstream.state import MemoryStateStore, StateStore
from fedstream.store import LocalModelStore, ModelStore


def make_state_store(settings: StateSettings, tenant: str) -> StateStore:
    backends = {"memory": lambda: MemoryStateStore(tenant)}
    return backends[settings.backend]()


def make_model_store(settings: StoreSettings, tenant: str) -> ModelStore:
    backends = {"local": lambda: LocalModelStore(settings.path, tenant)}
    return backends[settings.backend]()
