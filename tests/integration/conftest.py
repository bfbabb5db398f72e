"""Real gRPC servers, built by the same factories that the services' main() uses, on port 0."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc, round_pb2
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


def plan(run_id: str, round_: int, participants: list[str], *, base: str = "", kind: str = "train",
         min_updates: int = 0, timeout: float = 30.0) -> aggregator_pb2.RoundPlan:
    return aggregator_pb2.RoundPlan(
        run_id=run_id,
        round=round_,
        kind=round_pb2.ROUND_KIND_TRAIN if kind == "train" else round_pb2.ROUND_KIND_INIT,
        base_version=base,
        participants=participants,
        min_updates=min_updates or len(participants),
        deadline_unix=time.time() + timeout,
    )


def wait_terminal(control: aggregator_pb2_grpc.AggregatorControlStub, run_id: str, round_: int) -> aggregator_pb2.RoundEvent:
    last = None
    for event in control.WatchRound(aggregator_pb2.WatchRoundRequest(run_id=run_id, round=round_), timeout=60):
        last = event
    assert last is not None
    return last
