"""Client side of model movement: download a version into one flat buffer, upload an update
as a stream of chunks. Used by agents and by the command-line tool.

Both calls use fedstream.wire for their chunk messages, so a chunk's bytes are copied once on
each side instead of three times."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc

from fedstream import wire
from fedstream.errors import InvalidLayout, ResourceExhausted
from fedstream.metrics import LIMIT_HITS
from fedstream.tensors import DEFAULT_CHUNK_BYTES, ChunkReceiver, FlatBuffer, Layout, iter_chunks
from fedstream.v1 import aggregator_pb2 as pb

DOWNLOAD_METHOD = "/fedstream.v1.ModelService/DownloadModel"
UPLOAD_METHOD = "/fedstream.v1.UpdateService/UploadUpdate"

Progress = Callable[[int, int], None]


@dataclass
class DownloadedModel:
    version: str
    buffer: FlatBuffer
    metadata: dict[str, str]

    @property
    def layout(self) -> Layout:
        return self.buffer.layout


def download_call(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    return channel.unary_stream(
        DOWNLOAD_METHOD,
        request_serializer=pb.DownloadModelRequest.SerializeToString,
        response_deserializer=wire.deserializer(pb.DownloadModelResponse),
    )


def upload_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    return channel.stream_unary(
        UPLOAD_METHOD,
        request_serializer=wire.serialize,
        response_deserializer=pb.UploadUpdateResponse.FromString,
    )


# The largest model a client takes from a download's header before it allocates the buffer
# (models and single tensors past 4 GiB move: sizes and offsets are 64-bit throughout).
DEFAULT_MAX_MODEL_BYTES = 64 << 30


def download_model(
    channel: grpc.Channel,
    run_id: str,
    version: str = "",
    *,
    chunk_bytes: int = 0,
    timeout: float | None = None,
    on_progress: Progress | None = None,
    reuse: FlatBuffer | None = None,
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> DownloadedModel:
    """Downloads a version (the run's latest when empty), verifying every chunk.

    ``reuse``, a buffer from an earlier download, receives the model when the layouts match,
    so that a long-lived client does not allocate a model's worth of memory every round.

    Raises grpc.RpcError from the server, InvalidLayout for a malformed header, BadOffset,
    ChecksumMismatch or Truncated for a bad stream.
    """
    responses = download_call(channel)(
        pb.DownloadModelRequest(run_id=run_id, version=version, chunk_bytes=chunk_bytes),
        timeout=timeout,
    )
    return receive_model(responses, on_progress=on_progress, reuse=reuse, max_bytes=max_bytes)


def receive_model(
    responses: Iterator[pb.DownloadModelResponse],
    *,
    on_progress: Progress | None = None,
    reuse: FlatBuffer | None = None,
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> DownloadedModel:
    """Reads a download's response stream: its header, then chunks verified into a buffer.
    Raises InvalidLayout for a malformed header, ResourceExhausted for a model over
    ``max_bytes`` (before anything is allocated), BadOffset, ChecksumMismatch or Truncated for
    a bad stream (the catalog's errors only)."""
    first = next(responses, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise InvalidLayout("download did not start with a model header")
    layout = Layout.from_proto(first.header.layout)
    if layout.total_bytes > max_bytes:
        LIMIT_HITS.labels("", "client", "max_model_bytes").inc()
        raise ResourceExhausted(
            f"the model header declares {layout.total_bytes} bytes; this client takes at most "
            f"{max_bytes} (max_model_bytes)"
        )
    buffer = reuse if reuse is not None and reuse.layout == layout else FlatBuffer(layout)
    receiver = ChunkReceiver(layout, buffer.write)
    for msg in responses:
        if msg.WhichOneof("payload") != "chunk":
            raise InvalidLayout("only chunks may follow a model header")
        receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
        if on_progress is not None:
            on_progress(receiver.received, receiver.total)
    receiver.finish()
    return DownloadedModel(first.header.version, buffer, dict(first.header.metadata))


def update_requests(
    *,
    run_id: str,
    round_: int,
    agent_id: str,
    layout: Layout,
    buffers: Iterable[bytes | memoryview],
    num_examples: int,
    metrics: dict[str, float],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_progress: Progress | None = None,
) -> Iterator[pb.UploadUpdateRequest | wire.ChunkFrame]:
    """The request stream of one upload: its header, then its chunks."""
    yield pb.UploadUpdateRequest(
        header=pb.UpdateHeader(
            run_id=run_id,
            round=round_,
            agent_id=agent_id,
            layout=layout.to_proto(),
            num_examples=num_examples,
            metrics=metrics,
        )
    )
    for chunk in iter_chunks(layout, buffers, chunk_bytes):
        yield wire.ChunkFrame(chunk)
        if on_progress is not None:
            on_progress(chunk.offset + len(chunk.data), layout.total_bytes)


def upload_update(
    channel: grpc.Channel, *, timeout: float | None = None, **fields: object
) -> pb.UploadUpdateResponse:
    """Uploads one update (see ``update_requests`` for the fields); raises grpc.RpcError."""
    response: pb.UploadUpdateResponse = upload_call(channel)(update_requests(**fields), timeout=timeout)  # type: ignore[arg-type]
    return response
