"""Client side of model movement: download a version into one flat buffer, upload an update
as a stream of chunks. Used by agents and by the command-line tool.

Both calls use fedstream.wire for their chunk messages, so a chunk's bytes are copied once on
each side instead of three times."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc

from fedstream import wire
from fedstream.errors import BadOffset, InvalidLayout, ResourceExhausted
from fedstream.metrics import LIMIT_HITS
from fedstream.provenance import Provenance
from fedstream.tensors import DEFAULT_CHUNK_BYTES, ChunkReceiver, FlatBuffer, Layout, crc32c, iter_chunks_from
from fedstream.v1 import aggregator_pb2 as pb

DOWNLOAD_METHOD = "/fedstream.v1.ModelService/DownloadModel"
UPLOAD_METHOD = "/fedstream.v1.UpdateService/UploadUpdate"
UPLOAD_STATUS_METHOD = "/fedstream.v1.UpdateService/UploadStatus"

Progress = Callable[[int, int], None]


@dataclass
class DownloadProgress:
    """What a cut download leaves for the next attempt: the version its header named, the
    buffer and how many of its bytes were received and verified. Pass the same object to every
    attempt of one download: each resumes where the last stopped, against the same version."""

    version: str = ""
    buffer: FlatBuffer | None = None
    metadata: dict[str, str] | None = None
    received: int = 0


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
    progress: DownloadProgress | None = None,
) -> DownloadedModel:
    """Downloads a version (the run's latest when empty), verifying every chunk.

    ``reuse``, a buffer from an earlier download, receives the model when the layouts match,
    so that a long-lived client does not allocate a model's worth of memory every round.
    ``progress``, kept between attempts, makes a retry resume a cut download from its last
    verified byte, against the version the first attempt got.

    Raises grpc.RpcError from the server, InvalidLayout for a malformed header, BadOffset,
    ChecksumMismatch or Truncated for a bad stream.
    """
    offset = 0
    if progress is not None and progress.buffer is not None:
        version, offset = progress.version, progress.received
    responses = download_call(channel)(
        pb.DownloadModelRequest(run_id=run_id, version=version, chunk_bytes=chunk_bytes, offset=offset),
        timeout=timeout,
    )
    return receive_model(responses, on_progress=on_progress, reuse=reuse, max_bytes=max_bytes, progress=progress)


def receive_model(
    responses: Iterator[pb.DownloadModelResponse],
    *,
    on_progress: Progress | None = None,
    reuse: FlatBuffer | None = None,
    max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    progress: DownloadProgress | None = None,
) -> DownloadedModel:
    """Reads a download's response stream: its header, then chunks verified into a buffer.
    Raises InvalidLayout for a malformed header, ResourceExhausted for a model over
    ``max_bytes`` (before anything is allocated), BadOffset, ChecksumMismatch or Truncated for
    a bad stream (the catalog's errors only). With ``progress``, a stream that continues the
    download it records (same version and layout, starting at its received bytes) fills the
    same buffer from there; any other starts it afresh."""
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
    header = first.header
    state = progress if progress is not None else DownloadProgress()
    resumed = (state.buffer is not None and state.version == header.version and state.buffer.layout == layout
               and header.offset == state.received)
    if not resumed:
        if header.offset:
            raise BadOffset(f"the download starts at offset {header.offset}, not at this client's 0")
        buffer = reuse if reuse is not None and reuse.layout == layout else FlatBuffer(layout)
        state.version, state.buffer, state.metadata, state.received = header.version, buffer, dict(header.metadata), 0
    assert state.buffer is not None
    receiver = ChunkReceiver(layout, state.buffer.write, state.received)
    for msg in responses:
        if msg.WhichOneof("payload") != "chunk":
            raise InvalidLayout("only chunks may follow a model header")
        receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
        state.received = receiver.received
        if on_progress is not None:
            on_progress(receiver.received, receiver.total)
    receiver.finish()
    return DownloadedModel(state.version, state.buffer, dict(state.metadata or {}))


def upload_id_of(layout: Layout, buffers: Iterable[bytes | memoryview]) -> str:
    """The id that makes an upload resumable: a fingerprint of the update's layout and bytes
    (CRC-32C of the bytes, SHA-256 of the layout), the same for the same update however often
    it is made. One pass over the bytes at CRC-32C's speed."""
    crc = 0
    for buf in buffers:
        view = memoryview(buf)
        crc = crc32c(view.cast("B") if view.nbytes else b"", crc)
    digest = hashlib.sha256(layout.to_proto().SerializeToString(deterministic=True)).hexdigest()[:24]
    return f"{digest}-{layout.total_bytes:x}-{crc:08x}"


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
    upload_id: str = "",
    resume_offset: int = 0,
    provenance: Provenance | None = None,
) -> Iterator[pb.UploadUpdateRequest | wire.ChunkFrame]:
    """The request stream of one upload: its header, then its chunks (from ``resume_offset``
    on, for a resumed upload). ``provenance``: what the agent says of itself (none: nothing)."""
    said = provenance or Provenance()
    yield pb.UploadUpdateRequest(
        header=pb.UpdateHeader(
            run_id=run_id,
            round=round_,
            agent_id=agent_id,
            layout=layout.to_proto(),
            num_examples=num_examples,
            metrics=metrics,
            upload_id=upload_id,
            resume_offset=resume_offset,
            agent_version=said.agent_version,
            task_version=said.task_version,
            data_fingerprint=said.data_fingerprint,
        )
    )
    for chunk in iter_chunks_from(layout, buffers, resume_offset, chunk_bytes):
        yield wire.ChunkFrame(chunk)
        if on_progress is not None:
            on_progress(chunk.offset + len(chunk.data), layout.total_bytes)


def upload_update(
    channel: grpc.Channel, *, timeout: float | None = None, **fields: object
) -> pb.UploadUpdateResponse:
    """Uploads one update (see ``update_requests`` for the fields); raises grpc.RpcError. The
    response is the aggregator's confirmation that the update counted (or had already)."""
    response: pb.UploadUpdateResponse = upload_call(channel)(update_requests(**fields), timeout=timeout)  # type: ignore[arg-type]
    return response


def upload_status(
    channel: grpc.Channel, run_id: str, round_: int, agent_id: str, upload_id: str, *, timeout: float | None = None
) -> pb.UploadStatusResponse | None:
    """Where the upload ``upload_id`` resumes (and whether the agent's update for the round
    counted already); None from an aggregator that does not resume uploads. Raises
    grpc.RpcError (FAILED_PRECONDITION once the round no longer takes updates)."""
    call = channel.unary_unary(
        UPLOAD_STATUS_METHOD,
        request_serializer=pb.UploadStatusRequest.SerializeToString,
        response_deserializer=pb.UploadStatusResponse.FromString,
    )
    request = pb.UploadStatusRequest(run_id=run_id, round=round_, agent_id=agent_id, upload_id=upload_id)
    try:
        response: pb.UploadStatusResponse = call(request, timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise
    return response
