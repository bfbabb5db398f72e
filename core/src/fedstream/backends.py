"""Builds the state store and model store that settings name: the only place that chooses."""

from __future__ import annotations

from fedstream.config import StateSettings, StoreSettings
from fedstream.startup import writable_directory
from fedstream.state import MemoryStateStore, StateStore
from fedstream.store import LocalModelStore, ModelStore


def make_state_store(settings: StateSettings, tenant: str) -> StateStore:
    if settings.backend == "redis":
        from fedstream.state.redis import RedisStateStore, connect

        password = settings.redis.password.get_secret_value() if settings.redis.password else None
        return RedisStateStore(
            connect(settings.redis.url, password, settings.redis.retry_s), tenant, audit_keep=settings.audit_keep
        )
    return MemoryStateStore(tenant, audit_keep=settings.audit_keep)


def make_model_store(settings: StoreSettings, tenant: str) -> ModelStore:
    """Raises StartupError naming ``store.path`` when its directory cannot be written (exit code 4)."""
    writable_directory(settings.path, "store.path")
    if settings.backend == "s3":
        from fedstream.store.s3 import S3ModelStore, make_client

        return S3ModelStore(make_client(settings.s3), settings.s3, settings.path / "staging", tenant)
    return LocalModelStore(settings.path, tenant)
