"""Downloads of model versions, counted."""

from __future__ import annotations

from collections.abc import Iterator

from fedstream.errors import BadOffset, InvalidArgument, ModelNotFound
from fedstream.ids import check_run_id
from fedstream.metrics import LIMIT_HITS
from fedstream.store import ModelStore, ModelVersion
from fedstream.tensors import Chunk, check_chunk_bytes
from fedstream_aggregator import metrics as m


def check_download_chunk_bytes(tenant: str, chunk_bytes: int, allowed: tuple[int, int]) -> None:
    """Raises InvalidArgument, naming the value and both limits, for a chunk size a client asked
    for outside ``allowed`` (min_download_chunk_bytes, max_download_chunk_bytes); counts the hit."""
    low, high = allowed
    if low <= chunk_bytes <= high:
        return
    limit = "min_download_chunk_bytes" if chunk_bytes < low else "max_download_chunk_bytes"
    LIMIT_HITS.labels(tenant, "aggregator", limit).inc()
    raise InvalidArgument(
        f"download chunk size {chunk_bytes} bytes is outside {low}..{high} (min_download_chunk_bytes.."
        "max_download_chunk_bytes); 0 asks for the server's own"
    )


def open_model(
    store: ModelStore, tenant: str, run_id: str, version: str, chunk_bytes: int, offset: int = 0
) -> tuple[ModelVersion, Iterator[Chunk]]:
    """The version's header (the run's latest when ``version`` is empty) and an iterator of its
    chunks from byte ``offset`` on (a resumed download), each block checked against the
    version's recorded CRC-32C before it is sent (CorruptModel otherwise). Raises
    ModelNotFound, BadOffset for an offset past the model's end."""
    chunk_bytes = check_chunk_bytes(chunk_bytes)
    if not version:
        check_run_id(run_id)
        latest = store.latest(run_id)
        if latest is None:
            raise ModelNotFound(f"run {run_id!r} has no committed model yet")
        version = latest
    reader = store.open(version)
    total = reader.layout.total_bytes
    if offset > total:
        reader.close()
        raise BadOffset(f"download offset {offset} is past the end of model {version} ({total} bytes)")

    def chunks() -> Iterator[Chunk]:
        with reader:
            for chunk in reader.iter_chunks(chunk_bytes, offset):
                m.CHUNKS_SENT.labels(tenant).inc()
                m.BYTES_SENT.labels(tenant).inc(len(chunk.data))
                yield chunk

    return reader.info, chunks()
