"""Downloads of model versions, counted."""

from __future__ import annotations

from collections.abc import Iterator

from fedstream.errors import ModelNotFound
from fedstream.ids import check_run_id
from fedstream.store import ModelStore, ModelVersion
from fedstream.tensors import Chunk, check_chunk_bytes
from fedstream_aggregator import metrics as m


def open_model(
    store: ModelStore, tenant: str, run_id: str, version: str, chunk_bytes: int
) -> tuple[ModelVersion, Iterator[Chunk]]:
    """The version's header (the run's latest when ``version`` is empty) and an iterator of its
    chunks, which raises CorruptModel at the end if the stored bytes do not match their
    digest. Raises ModelNotFound."""
    chunk_bytes = check_chunk_bytes(chunk_bytes)
    if not version:
        check_run_id(run_id)
        latest = store.latest(run_id)
        if latest is None:
            raise ModelNotFound(f"run {run_id!r} has no committed model yet")
        version = latest
    reader = store.open(version)

    def chunks() -> Iterator[Chunk]:
        with reader:
            for chunk in reader.iter_chunks(chunk_bytes):
                m.CHUNKS_SENT.labels(tenant).inc()
                m.BYTES_SENT.labels(tenant).inc(len(chunk.data))
                yield chunk

    return reader.info, chunks()
