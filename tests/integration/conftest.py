"""Real gRPC servers, built by the same factories that the services' main() uses, on port 0."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel
from fedstream.pki import Identity, TlsIdentity
from fedstream.state import MemoryStateStore, SQLiteStateStore, StateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store import LocalModelStore
from fedstream_aggregator.server import AggregatorServer, build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.secagg import Authority


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


@dataclass
class TlsAggregator:
    """An aggregator behind mutual TLS (tenant t1's authority; agents' records not checked)."""

    authority: Authority
    server: AggregatorServer
    service: TlsIdentity  # a service's identity: it may open rounds

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, identity: TlsIdentity | None = None) -> grpc.Channel:
        return channel(self.endpoint, identity or self.service)


@pytest.fixture
def tls_aggregator(tmp_path: Path, model_store: LocalModelStore) -> Iterator[TlsAggregator]:
    authority = Authority("t1")
    hour = dt.timedelta(hours=1)
    tls = authority.ca.issue_identity(Identity("t1", "service", "aggregator"), hour, ("localhost", "127.0.0.1"))
    service = AggregatorService(MemoryStateStore("t1"), model_store, tmp_path / "spool", chunk_bytes=4096)
    server = build_server(service, "127.0.0.1", 0, max_workers=16, tls=tls, check_agents=False)
    yield TlsAggregator(authority, server, authority.ca.issue_identity(Identity("t1", "service", "scheduler"), hour))
    server.stop(0)



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
