"""Coverage-guided fuzz target (atheris) for what parses bytes from the network before any
check: the zero-copy chunk decoder (fedstream.wire.parse_chunk) and the layout header parser
(protobuf Layout -> fedstream.tensors.Layout.from_proto), and a chunk stream fed to the
verifying receiver; the header of an upload (UploadUpdateRequest: its layout and metrics, as
the aggregator's upload handler reads it) and a download's response stream (DownloadModelResponse:
the model header, then chunks, as the agent and the CLI receive a model).

Invariants: the decoder returns a frame or None and never raises; a decoded chunk re-encodes
to the same bytes the stock protobuf codec gives; the layout parser raises only InvalidLayout
(or protobuf's DecodeError for bytes that are not a message); the receiver raises only the
catalog's errors and never hands its sink a byte of a bad chunk; the upload header and download parsers raise only
the catalog's errors (FedstreamError subclasses), and what they accept is self-consistent.

Run: make fuzz (a fixed budget), or python fuzz/fuzz_wire.py fuzz/corpus -max_total_time=600.
Inputs that found bugs are kept in fuzz/corpus/ and replayed by tests/unit/test_fuzz_corpus.py.
"""

from __future__ import annotations

import sys

from google.protobuf.message import DecodeError

from fedstream.errors import FedstreamError, InvalidLayout
from fedstream.tensors import ChunkReceiver, Layout, crc32c
from fedstream.transfer import receive_model
from fedstream.v1 import aggregator_pb2, tensor_pb2
from fedstream.wire import deserializer, parse_chunk
from fedstream_aggregator.ingest import (
    DEFAULT_MAX_METRIC_NAME_BYTES,
    DEFAULT_MAX_METRICS,
    check_report_metrics,
)
from fedstream_aggregator.servicer import _header

RECEIVER_LAYOUT = Layout.build([("a", "float32", (4, 4)), ("b", "int64", (3,)), ("c", "bfloat16", (5,))])


def check_chunk(data: bytes) -> None:
    frame = parse_chunk(data)
    if frame is None:
        return
    c = frame.chunk
    stock = aggregator_pb2.UploadUpdateRequest(chunk=tensor_pb2.Chunk(offset=c.offset, data=bytes(c.data), crc32c=c.crc32c))
    again = aggregator_pb2.UploadUpdateRequest.FromString(stock.SerializeToString())
    assert again.chunk.offset == c.offset and again.chunk.data == bytes(c.data) and again.chunk.crc32c == c.crc32c


def check_layout(data: bytes) -> None:
    try:
        msg = tensor_pb2.Layout.FromString(data)
    except DecodeError:
        return
    try:
        layout = Layout.from_proto(msg)
    except InvalidLayout:
        return
    assert Layout.from_proto(layout.to_proto()) == layout


def check_receiver(data: bytes) -> None:
    """Splits the input into (offset, length) chunks of a fixed layout; some with a good CRC."""
    received = bytearray(RECEIVER_LAYOUT.total_bytes)
    accepted: list[tuple[int, bytes]] = []

    def sink(offset: int, chunk: bytes | memoryview) -> None:
        accepted.append((offset, bytes(chunk)))
        received[offset : offset + len(chunk)] = chunk

    receiver = ChunkReceiver(RECEIVER_LAYOUT, sink)
    pos = 0
    try:
        while pos + 3 <= len(data):
            offset, size, good = data[pos], data[pos + 1], data[pos + 2] & 1
            payload = data[pos + 3 : pos + 3 + size]
            pos += 3 + size
            crc = crc32c(payload) if good else (crc32c(payload) ^ 1)
            receiver.accept(offset, payload, crc)
            assert good and payload, "a bad or empty chunk was accepted"
        receiver.finish()
    except FedstreamError:
        pass
    for offset, chunk in accepted:  # the sink saw good chunks only, in order, within the layout
        assert offset + len(chunk) <= RECEIVER_LAYOUT.total_bytes


def check_upload_header(data: bytes) -> None:
    """An upload's first message through the aggregator's header parsing and metric checks."""
    try:
        msg = aggregator_pb2.UploadUpdateRequest.FromString(data)
    except DecodeError:
        return
    if msg.WhichOneof("payload") != "header":
        return
    try:
        header = _header(msg.header, "fuzz-agent", Layout.from_proto)
        check_report_metrics(header.metrics, DEFAULT_MAX_METRICS, DEFAULT_MAX_METRIC_NAME_BYTES, "fuzz")
    except FedstreamError:
        return
    assert header.layout.total_bytes == msg.header.layout.total_bytes
    assert len(header.metrics) <= DEFAULT_MAX_METRICS


def _messages(data: bytes) -> list[object]:
    """Length-prefixed (one byte) messages, decoded as the download's gRPC deserializer does."""
    parse, out, pos = deserializer(aggregator_pb2.DownloadModelResponse), [], 0
    while pos < len(data):
        size = data[pos]
        try:
            out.append(parse(data[pos + 1 : pos + 1 + size]))
        except DecodeError:  # gRPC ends such a call itself: not the parser's input
            break
        pos += 1 + size
    return out


def check_download(data: bytes) -> None:
    """A download's response stream through the client's receiver."""
    try:
        model = receive_model(iter(_messages(data)), max_bytes=1 << 20)
    except FedstreamError:
        return
    assert len(model.buffer.data) == model.buffer.layout.total_bytes


TARGETS = (check_chunk, check_layout, check_receiver, check_upload_header, check_download)


def one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
