"""The agent's transfers against a real aggregator on loopback, their first stream cut by the
client: the download retried from the byte it had, the upload from the chunk the aggregator
kept; a confirmed upload is remembered (in a file, across a restart) and never sent again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from fedstream.grpcutil import channel
from fedstream.rounds import Assignment, RoundKind, RoundPlan, TrainingConfig
from fedstream.state import MemoryStateStore
from fedstream.tensors import iter_chunks
from fedstream.transfer import upload_id_of, upload_status
from fedstream_agent.reconnect import Reconnect
from fedstream_agent.settings import AgentSettings, AgentTlsSettings
from fedstream_agent.transfers import ConfirmedUploads, Transfers
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import wait_until

RUN = "run-ag"
BASE = f"{RUN}/000000"
CHUNK = 500


class CutFirst(grpc.StreamUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Cancels the first upload once the aggregator holds ``upload_chunks`` of its chunks, and
    the first download after ``download_chunks`` chunks; records what each call asked for."""

    def __init__(self, plain: grpc.Channel, upload_chunks: int, download_chunks: int) -> None:
        self.plain = plain
        self.upload_chunks = upload_chunks
        self.download_chunks = download_chunks
        self.resume_offsets: list[int] = []
        self.download_offsets: list[int] = []

    def intercept_stream_unary(self, continuation, details, requests):
        first = not self.resume_offsets
        gone = threading.Event()

        def cutting():
            sent = 0
            for msg in requests:
                if msg.WhichOneof("payload") == "header":
                    self.resume_offsets.append(msg.header.resume_offset)
                    head = msg.header
                else:
                    sent = msg.chunk.offset + len(msg.chunk.data)
                yield msg
                if first and msg.WhichOneof("payload") == "chunk" and sent >= self.upload_chunks * CHUNK:
                    self._wait_held(head, sent)
                    gone.wait(10)  # the link goes quiet: the call's deadline ends it
                    return

        if first:  # a blocking call gives no handle to cancel: its deadline cuts it instead
            details = details._replace(timeout=3.0)
        try:
            return continuation(details, cutting())
        finally:
            gone.set()

    def _wait_held(self, head, offset: int) -> None:
        def held() -> bool:
            status = upload_status(self.plain, RUN, 1, head.agent_id, head.upload_id)
            return status is not None and status.offset == offset

        wait_until(held, what=f"the aggregator holds {offset} bytes")

    def intercept_unary_stream(self, continuation, details, request):
        first = not self.download_offsets
        self.download_offsets.append(request.offset)
        call = continuation(details, request)

        def cutting():
            for i, msg in enumerate(call):
                yield msg
                if first and i == self.download_chunks:
                    call.cancel()

        return cutting()


@pytest.fixture
def aggregator(tmp_path, model_store):
    store_model(model_store, BASE, random_model(0, scale=16))
    service = AggregatorService(MemoryStateStore("t1"), model_store, tmp_path / "spool", chunk_bytes=4096, durable=True)
    server = build_server(service, "127.0.0.1", 0, max_workers=16, check_agents=False)
    service.open_round(RoundPlan(RUN, 1, "train", BASE, ("a", "b"), 2, time.time() + 60))
    yield server
    server.stop(None)


def transfers_of(endpoint_channel: grpc.Channel, confirmed: Path) -> Transfers:
    settings = AgentSettings(agent_id="a", device="cpu", tls=AgentTlsSettings(insecure_plaintext=True))
    return Transfers("a", lambda _: endpoint_channel, Reconnect(settings), threading.Event(), lambda: None,
                     ConfirmedUploads(confirmed), max_model_bytes=1 << 30)


def assignment(port: int) -> Assignment:
    endpoint = f"127.0.0.1:{port}"
    return Assignment(RUN, 1, RoundKind.TRAIN, "digits", BASE, endpoint, endpoint, TrainingConfig(), time.time() + 60)


def test_the_agent_resumes_a_cut_upload_and_never_sends_a_confirmed_one_again(aggregator, model_store, tmp_path):
    plain = channel(f"127.0.0.1:{aggregator.port}")
    cutter = CutFirst(plain, upload_chunks=7, download_chunks=0)
    transfers = transfers_of(grpc.intercept_channel(plain, cutter), tmp_path / "id" / "confirmed.json")
    model = random_model(3, scale=16)
    layout = layout_of(model)
    buffers = list(buffers_of(layout, model))
    chunks = list(iter_chunks(layout, buffers, CHUNK))

    transfers.upload(assignment(aggregator.port), layout, lambda: buffers, 5, {}, CHUNK, lambda: None)
    # The agent restarted: a new process reads what was confirmed from its file.
    restarted = transfers_of(grpc.intercept_channel(plain, cutter), tmp_path / "id" / "confirmed.json")
    restarted.upload(assignment(aggregator.port), layout, lambda: buffers, 5, {}, CHUNK, lambda: None)

    assert cutter.resume_offsets == [0, chunks[7].offset]  # once cut, once resumed; then never again
    with model_store.open_update(RUN, 1, "a") as reader:
        assert reader.read_at(0, layout.total_bytes) == b"".join(bytes(b) for b in buffers)
    assert [r.agent_id for r in aggregator.service.snapshot(RUN, 1).reports] == ["a"]
    status = upload_status(plain, RUN, 1, "a", upload_id_of(layout, buffers))
    assert status is not None and status.counted
    plain.close()


def test_the_agent_resumes_a_cut_download_from_the_bytes_it_has(aggregator, model_store, tmp_path):
    plain = channel(f"127.0.0.1:{aggregator.port}")
    cutter = CutFirst(plain, upload_chunks=0, download_chunks=2)
    transfers = transfers_of(grpc.intercept_channel(plain, cutter), tmp_path / "confirmed.json")

    model = transfers.download(assignment(aggregator.port), 0, None)

    with model_store.open(BASE) as reader:
        assert bytes(model.buffer.data) == reader.read_at(0, reader.layout.total_bytes)
    assert cutter.download_offsets == [0, 2 * 4096]  # the header and two chunks came before the cut
    plain.close()
