"""Builds the state store and model store that settings name: the only place that chooses."""

from __future__ import annotations

from fedstream.config import StateSettings, StoreSettings
from fedstream.errors import StorageUnusable
from fedstream.state import MemoryStateStore, SQLiteStateStore, StateStore
from fedstream.store import LocalModelStore, ModelStore


def make_state_store(settings: StateSettings, tenant: str, env_prefix: str = "") -> StateStore:
    """The state store the settings name. ``env_prefix`` (the service's, e.g.
    ``FEDSTREAM_SCHEDULER_``) names the variable to change in an error; raises StorageUnusable
    when the SQLite file cannot be used."""
    if settings.backend == "sqlite":
        sqlite = settings.sqlite
        try:
            return SQLiteStateStore(sqlite.path, tenant, busy_timeout_s=sqlite.busy_timeout_s,
                                    synchronous=sqlite.synchronous, audit_keep=settings.audit_keep)
        except StorageUnusable as e:
            setting = f"{env_prefix}STATE__SQLITE__PATH" if env_prefix else "state.sqlite.path"
            raise StorageUnusable(f"{e.public} (setting {setting})") from e
    if settings.backend == "redis":
        from fedstream.state.redis import RedisStateStore, connect

        password = settings.redis.password.get_secret_value() if settings.redis.password else None
        return RedisStateStore(
            connect(settings.redis.url, password, settings.redis.retry_s), tenant, audit_keep=settings.audit_keep
        )
    return MemoryStateStore(tenant, audit_keep=settings.audit_keep)


def make_model_store(settings: StoreSettings, tenant: str) -> ModelStore:
    if settings.backend == "s3":
        from fedstream.store.s3 import S3ModelStore, make_client

        return S3ModelStore(make_client(settings.s3), settings.s3, settings.path / "staging", tenant)
    return LocalModelStore(settings.path, tenant)
