"""Contract tests of the Health role that every backend plays (state stores and model stores
alike), and each backend's own way of naming its server and answering a ping."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedstream.config import S3Settings
from fedstream.errors import Unavailable
from fedstream.state import Health, MemoryStateStore, SQLiteStateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream_testing.servers import free_port


def s3_store(settings: S3Settings, staging: Path) -> S3ModelStore:
    return S3ModelStore(make_client(settings), settings, staging, "t1")


@pytest.fixture(params=["memory", "sqlite", "redis", "local", "s3"])
def backend(request, tmp_path) -> Health:
    if request.param == "sqlite":
        return SQLiteStateStore(tmp_path / "state.db", "t1")
    if request.param == "redis":
        return RedisStateStore(connect(request.getfixturevalue("redis_url")), "t1")
    if request.param == "local":
        return LocalModelStore(tmp_path / "models", tenant="t1")
    if request.param == "s3":
        return s3_store(request.getfixturevalue("s3_settings"), tmp_path / "staging")
    return MemoryStateStore("t1")


class TestHealth:
    """Health: the tenant, a printable endpoint, and a ping that answers while the server does."""

    def test_a_reachable_backend_answers_ping(self, backend):
        assert backend.ping() is None
        assert backend.tenant == "t1"

    def test_endpoint_is_a_stable_name(self, backend):
        endpoint = backend.endpoint()

        assert isinstance(endpoint, str) and endpoint
        assert backend.endpoint() == endpoint


def test_redis_endpoint_names_the_server(redis_server, redis_url):
    assert RedisStateStore(connect(redis_url), "t1").endpoint() == f"redis at 127.0.0.1:{redis_server.port}"


def test_redis_endpoint_never_shows_the_password():
    store = RedisStateStore(connect("redis://:hunter2@127.0.0.1:6390/0", password="hunter2"), "t1")

    assert store.endpoint() == "redis at 127.0.0.1:6390"


def test_redis_ping_of_a_dead_server_is_unavailable_naming_it():
    port = free_port()
    store = RedisStateStore(connect(f"redis://127.0.0.1:{port}/0", retry_s=60), "t1")

    with pytest.raises(Unavailable, match=f"redis at 127.0.0.1:{port} does not answer"):
        store.ping()


def test_sqlite_endpoint_names_the_file(tmp_path):
    assert SQLiteStateStore(tmp_path / "state.db", "t1").endpoint() == f"sqlite file {tmp_path / 'state.db'}"


def test_sqlite_ping_of_a_closed_store_is_unavailable_naming_it(tmp_path):
    store = SQLiteStateStore(tmp_path / "state.db", "t1")
    store.close()

    with pytest.raises(Unavailable, match=f"sqlite file {tmp_path / 'state.db'}"):
        store.ping()


def test_local_endpoint_names_the_directory(tmp_path):
    assert LocalModelStore(tmp_path, tenant="t1").endpoint() == f"model directory {tmp_path / 't1'}"


def test_s3_endpoint_names_the_server_and_bucket(s3_settings, tmp_path):
    store = s3_store(s3_settings, tmp_path)

    assert store.endpoint() == f"S3 at {s3_settings.endpoint} (bucket {s3_settings.bucket})"


def test_s3_ping_creates_the_bucket_or_says_it_is_missing(s3_settings, tmp_path):
    refusing = s3_settings.model_copy(update={"create_bucket": False})
    with pytest.raises(Unavailable, match=f"bucket {s3_settings.bucket!r} does not exist"):
        s3_store(refusing, tmp_path).ping()
    store = s3_store(s3_settings, tmp_path)
    store.ping()

    assert store.versions("r1") == []


def test_s3_ping_of_a_dead_server_is_unavailable_naming_it(tmp_path):
    settings = S3Settings(endpoint=f"127.0.0.1:{free_port()}", access_key="x", secret_key="y", retry_s=60)

    with pytest.raises(Unavailable, match=f"S3 at {settings.endpoint}"):
        s3_store(settings, tmp_path).ping()
