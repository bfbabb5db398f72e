"""What tests share beyond fixtures: uploads over gRPC, waiting for a condition, round plans for
the aggregator and following a round to its end, an asyncio loop in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from fedstream.convert import kind_to_proto
from fedstream.provenance import Provenance
from fedstream.rounds import RoundKind
from fedstream.tensors import DEFAULT_CHUNK_BYTES, Layout
from fedstream.transfer import upload_update
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc
from fedstream_testing.helpers import buffers_of, layout_of

T = TypeVar("T")


def upload_tensors(
    ch: grpc.Channel, agent: str, layout: Layout, buffers: Iterable[bytes | memoryview], examples: int = 5, *,
    run_id: str, round_: int = 1, metrics: dict[str, float] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES, timeout: float = 30.0, provenance: Provenance | None = None,
) -> aggregator_pb2.UploadUpdateResponse:
    """Uploads one update of ``layout`` (its tensors' bytes in ``buffers``) as ``agent`` (empty:
    the agent the channel's certificate names), saying ``provenance`` of itself; raises
    grpc.RpcError."""
    return upload_update(ch, timeout=timeout, run_id=run_id, round_=round_, agent_id=agent, layout=layout,
                         buffers=buffers, num_examples=examples, metrics=metrics or {}, chunk_bytes=chunk_bytes,
                         provenance=provenance)


def upload(
    ch: grpc.Channel, agent: str, model: Mapping[str, Any], examples: int = 5, *,
    run_id: str, round_: int = 1, metrics: dict[str, float] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES, timeout: float = 30.0, provenance: Provenance | None = None,
) -> aggregator_pb2.UploadUpdateResponse:
    """Uploads ``model`` as one update: a model as ``helpers.random_model`` makes them, or a
    PyTorch state dict (then the tasks' distribution converts it); see ``upload_tensors``."""
    if all(isinstance(v, tuple) for v in model.values()):
        layout = layout_of(model)
        buffers: Iterable[memoryview] = buffers_of(layout, model)
    else:
        from fedstream_tasks import torchio  # PyTorch: only for tests that upload tensors of it

        layout = torchio.layout_of(dict(model))
        buffers = torchio.buffers_of(layout, dict(model))
    return upload_tensors(ch, agent, layout, buffers, examples, run_id=run_id, round_=round_,
                          metrics=metrics, chunk_bytes=chunk_bytes, timeout=timeout, provenance=provenance)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "",
               interval: float = 0.05) -> None:
    """Returns once ``predicate()`` is true; raises AssertionError(``what``) when ``timeout``
    seconds pass first."""
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, what or f"not true after {timeout} s"
        time.sleep(interval)


def plan(run_id: str, round_: int, participants: list[str], *, base: str = "",
         kind: RoundKind | str = RoundKind.TRAIN, min_updates: int = 0,
         timeout: float = 30.0, target_updates: int = 0) -> aggregator_pb2.RoundPlan:
    """A round plan for the aggregator: every participant needed unless ``min_updates``, the
    deadline ``timeout`` seconds from now, closed on ``target_updates`` when given."""
    return aggregator_pb2.RoundPlan(
        run_id=run_id,
        round=round_,
        kind=kind_to_proto(kind),
        base_version=base,
        participants=participants,
        min_updates=min_updates or len(participants),
        deadline_unix=time.time() + timeout,
        target_updates=target_updates,
    )


def wait_terminal(control: aggregator_pb2_grpc.AggregatorControlStub, run_id: str,
                  round_: int) -> aggregator_pb2.RoundEvent:
    """The last event of the round, watched until the aggregator ends the stream (60 s at most)."""
    last: aggregator_pb2.RoundEvent | None = None
    for event in control.WatchRound(aggregator_pb2.WatchRoundRequest(run_id=run_id, round=round_), timeout=60):
        last = event
    assert last is not None
    return last


class LoopThread:
    """An asyncio loop in a thread, for the scheduler's aio server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Runs ``coro`` on the loop and returns its result (waiting ``timeout`` seconds at most)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
