"""Fixtures shared by all tiers: stores, and real gRPC servers bound to port 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from fedstream.config import S3Settings
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream_testing.servers import RedisServer, S3Server


@pytest.fixture
def model_store(tmp_path: Path) -> LocalModelStore:
    return LocalModelStore(tmp_path / "models", tenant="t1")


@pytest.fixture
def state_store() -> MemoryStateStore:
    return MemoryStateStore("t1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on the session's redis-server."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(s3_server, request) -> S3Settings:
    """Settings for a bucket of this test's own on the session's S3 server."""
    import re

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-b"
    return S3Settings(endpoint=s3_server.endpoint, access_key="test", secret_key="test", bucket=bucket, retry_s=5)
