"""Hypothesis-drawn upload streams against a real aggregator over gRPC: chunks reordered,
duplicated, dropped, truncated, corrupted, misplaced or oversized, headers that lie. After
each refused stream the round's accumulator and journal are exactly as before and the server
still serves; at the end the committed model is the average of the intact streams alone."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.tensors import Layout, iter_chunks
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2, tensor_pb2
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import plan, wait_terminal

RUN, ROUND = "fuzz", 1
MAX_EXAMPLES = 60
CHUNK = 97  # not a divisor of any tensor: chunks straddle tensor boundaries


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.store = LocalModelStore(tmp / "models", "fz")
        self.base = random_model(0)
        store_model(self.store, f"{RUN}/000000", self.base)
        self.service = AggregatorService(MemoryStateStore("fz"), self.store, tmp / "spool", chunk_bytes=4096)
        self.server = build_server(self.service, "127.0.0.1", 0, max_workers=8)
        self.ch = channel(f"127.0.0.1:{self.server.port}")
        self.control = pb_grpc.AggregatorControlStub(self.ch)
        self.agents = (f"agent-{i}" for i in itertools.count())
        self.participants = [f"agent-{i}" for i in range(MAX_EXAMPLES + 20)]
        self.control.OpenRound(plan(RUN, ROUND, self.participants, base=f"{RUN}/000000", min_updates=1, timeout=600),
                               timeout=5)
        self.accepted: list[tuple[dict, int]] = []

    def snapshot(self) -> tuple:
        rnd = self.service.rounds.get(RUN, ROUND)
        acc = rnd.accumulator
        sums = {t.name: a.copy() for t, a in zip(acc.sums_layout().tensors, acc.sums(), strict=True)}
        return acc.total_weight, acc.count, sums, dict(self.service.state.get_aggregation(RUN, ROUND).reports)

    def serving(self) -> bool:
        reply = health_pb2_grpc.HealthStub(self.ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("stream-fuzz"))
    yield h
    h.server.stop(0)


def header(agent: str, layout: Layout, examples: int = 7) -> pb.UploadUpdateRequest:
    return pb.UploadUpdateRequest(header=pb.UpdateHeader(run_id=RUN, round=ROUND, agent_id=agent,
                                                         layout=layout.to_proto(), num_examples=examples))


def chunk(offset: int, data: bytes, crc: int) -> pb.UploadUpdateRequest:
    return pb.UploadUpdateRequest(chunk=tensor_pb2.Chunk(offset=offset, data=data, crc32c=crc))


MUTATIONS = ("intact", "reorder", "duplicate", "drop", "truncate_stream", "truncate_chunk", "flip_byte", "bad_crc",
             "bad_offset", "extra_chunk", "oversized_chunk", "header_twice", "chunk_first", "layout_lies",
             "wrong_round", "nan")


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**16), where=st.floats(0, 1))
def test_a_bad_stream_changes_nothing_and_the_server_serves_on(harness, mutation, seed, where):
    agent = next(harness.agents)
    model = random_model(seed)
    layout = layout_of(model)
    if mutation == "nan":
        model = {k: (d, np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(a.dtype)
                     if d in ("float32", "float64") and a.size else a) for k, (d, a) in model.items()}
    chunks = [chunk(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), CHUNK)]
    i = min(int(where * len(chunks)), len(chunks) - 1)
    requests = [header(agent, layout)]
    if mutation == "reorder" and len(chunks) > 1:
        j = (i + 1) % len(chunks)
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif mutation == "duplicate":
        chunks.insert(i, chunks[i])
    elif mutation == "drop":
        del chunks[i]
    elif mutation == "truncate_stream":
        chunks = chunks[:i]
    elif mutation == "truncate_chunk":
        c = chunks[i].chunk
        chunks[i] = chunk(c.offset, c.data[:-1], c.crc32c)
    elif mutation == "flip_byte":
        c = chunks[i].chunk
        data = bytearray(c.data)
        data[len(data) // 2] ^= 0x40
        chunks[i] = chunk(c.offset, bytes(data), c.crc32c)
    elif mutation == "bad_crc":
        c = chunks[i].chunk
        chunks[i] = chunk(c.offset, c.data, c.crc32c ^ 1)
    elif mutation == "bad_offset":
        c = chunks[i].chunk
        chunks[i] = chunk(c.offset + 1, c.data, c.crc32c)
    elif mutation == "extra_chunk":
        chunks.append(chunk(layout.total_bytes, b"\0" * 8, 0))
    elif mutation == "oversized_chunk":
        chunks[i] = chunk(chunks[i].chunk.offset, b"\0" * (layout.total_bytes + 1), 0)
    elif mutation == "header_twice":
        chunks.insert(i, header(agent, layout))
    elif mutation == "chunk_first":
        requests = []
    elif mutation == "layout_lies":
        other = Layout.build((t.name, t.dtype, (t.numel + 1,)) if k == 0 else (t.name, t.dtype, t.shape)
                             for k, t in enumerate(layout.tensors))
        requests = [header(agent, other)]
    elif mutation == "wrong_round":
        requests = [pb.UploadUpdateRequest(header=pb.UpdateHeader(
            run_id=RUN, round=ROUND + 1, agent_id=agent, layout=layout.to_proto(), num_examples=7))]
    before = harness.snapshot()
    send = harness.ch.stream_unary("/fedstream.v1.UpdateService/UploadUpdate",
                                   request_serializer=pb.UploadUpdateRequest.SerializeToString,
                                   response_deserializer=pb.UploadUpdateResponse.FromString)

    try:
        reply = send(iter(requests + chunks), timeout=30)
        error = None
    except grpc.RpcError as e:
        reply, error = None, e

    intact = mutation == "intact" or (mutation == "reorder" and len(chunks) == 1)
    if intact:
        assert error is None, error
        assert reply.bytes_received == layout.total_bytes
        harness.accepted.append((model, 7))
    else:
        assert error is not None, f"{mutation} was accepted"
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DATA_LOSS,
                                grpc.StatusCode.NOT_FOUND), (mutation, error.code(), error.details())
        after = harness.snapshot()
        assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3], mutation
        for name, arr in before[2].items():
            np.testing.assert_array_equal(after[2][name], arr, err_msg=mutation)
    assert harness.serving()


def test_refused_agents_upload_again_and_the_model_is_the_average_of_intact_streams_only(harness):
    # Every participant that has not been counted (those refused above, those never drawn)
    # now sends an intact stream: each is counted, and the round commits once all are in.
    counted = set(harness.service.state.get_aggregation(RUN, ROUND).reports)
    for k, agent in enumerate(a for a in harness.participants if a not in counted):
        model = random_model(10_000 + k)
        layout = layout_of(model)
        reqs = [header(agent, layout),
                *[chunk(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), CHUNK)]]
        reply = harness.ch.stream_unary("/fedstream.v1.UpdateService/UploadUpdate",
                                        request_serializer=pb.UploadUpdateRequest.SerializeToString,
                                        response_deserializer=pb.UploadUpdateResponse.FromString)(iter(reqs), timeout=30)
        assert not reply.duplicate
        harness.accepted.append((model, 7))

    event = wait_terminal(harness.control, RUN, ROUND)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert len(event.reports) == len(harness.participants) == len(harness.accepted)
    with harness.store.open(event.version) as reader:
        data = b"".join(c.data for c in reader.iter_chunks(1 << 20))
    layout = layout_of(harness.accepted[0][0])
    for t in layout.tensors:
        if t.dtype != "float32":
            continue
        want = sum(m[t.name][1].astype(np.float64).reshape(-1) for m, _ in harness.accepted) / len(harness.accepted)
        got = np.frombuffer(data[t.offset:t.end], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
