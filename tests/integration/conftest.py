"""Real gRPC servers, built by the same factories that the services' main() uses, on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore, SQLiteStateStore, StateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService


@pytest.fixture
def aggregator(tmp_path: Path, model_store: LocalModelStore) -> Iterator[AggregatorServer]:
    service = AggregatorService(MemoryStateStore("t1"), model_store, tmp_path / "spool", chunk_bytes=4096)
    server = build_server(service, "127.0.0.1", 0, max_workers=16)
    yield server
    server.stop(0)


@pytest.fixture
def agg_channel(aggregator: AggregatorServer) -> Iterator[grpc.Channel]:
    ch = channel(f"127.0.0.1:{aggregator.port}")
    yield ch
    ch.close()



@pytest.fixture(params=["memory", "sqlite", "redis"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """One tenant's state store on each backend in turn (Redis a real server)."""
    if request.param == "redis":
        yield RedisStateStore(connect(request.getfixturevalue("redis_url")), "t1")
    elif request.param == "sqlite":
        sqlite_store = SQLiteStateStore(tmp_path / "state.db", "t1")
        yield sqlite_store
        sqlite_store.close()
    else:
        yield MemoryStateStore("t1")
