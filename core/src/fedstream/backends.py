"""Builds the state store and model store that settings name: the only place that chooses."""

from __future__ import annotations

from fedstream.config import StateSettings, StoreSettings
from fedstream.errors import StorageUnusable
from fedstream.exitcodes import ExitCode
from fedstream.startup import StartupError, writable_directory
from fedstream.state import MemoryStateStore, SQLiteStateStore, StateStore
from fedstream.store import LocalModelStore, ModelStore


def make_state_store(settings: StateSettings, tenant: str) -> StateStore:
    """The state store the settings name. Raises StartupError naming ``state.sqlite.path``
    when the SQLite file cannot be used (exit code 4)."""
    if settings.backend == "sqlite":
        sqlite = settings.sqlite
        try:
            return SQLiteStateStore(sqlite.path, tenant, busy_timeout_s=sqlite.busy_timeout_s,
                                    synchronous=sqlite.synchronous, audit_keep=settings.audit_keep)
        except StorageUnusable as e:
            raise StartupError(
                "state.sqlite.path", str(sqlite.path), e.public,
                "point it at a file on a local disk this process may write (the scheduler and the "
                "aggregator of one machine name the same file)", ExitCode.BAD_DATA,
            ) from e
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
