"""Downloads of model versions, counted; the blocks of a version that many agents download at
once are read, checked and encoded once for all of them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial

from fedstream import wire
from fedstream.errors import BadOffset, InvalidArgument, ModelNotFound
from fedstream.ids import check_run_id
from fedstream.memtune import release_free_memory
from fedstream.metrics import LIMIT_HITS
from fedstream.store import ModelReader, ModelStore, ModelVersion
from fedstream.tensors import Chunk, check_chunk_bytes
from fedstream_aggregator import metrics as m

# The most bytes of encoded blocks kept for downloads streaming at once (least recently used
# dropped): downloads of one version within this many bytes of each other share their reads.
DEFAULT_SHARED_BLOCK_BYTES = 64 << 20

BlockKey = tuple[str, str, float, int, int]  # version, SHA-256, created, block size, block index
Message = wire.ChunkFrame | wire.EncodedChunk


class SharedBlocks:
    """The encoded download messages of version blocks, shared by the downloads streaming now.

    A block is read from the store, checked against its recorded CRC-32C and encoded once,
    then sent as the same bytes to every download that reaches it while it is held: fifty
    agents downloading one version cost one read, one check and one encoding of each block,
    not fifty (and never a copy of the version per agent). At most ``max_bytes`` are held;
    all are dropped when the last download streaming ends, so idle memory does not grow.
    """

    def __init__(self, max_bytes: int = DEFAULT_SHARED_BLOCK_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._held: OrderedDict[BlockKey, wire.EncodedChunk] = OrderedDict()
        self._loading: dict[BlockKey, threading.Lock] = {}
        self._bytes = 0
        self._streams = 0

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def enter(self) -> None:
        with self._lock:
            self._streams += 1

    def leave(self) -> None:
        with self._lock:
            self._streams -= 1
            if self._streams or not self._held:
                return
            self._held.clear()
            self._bytes = 0
        release_free_memory()

    def get(self, key: BlockKey, load: Callable[[], Chunk]) -> wire.EncodedChunk:
        """The block ``key``, loaded (``load``: read and checked) by the first stream that
        asks while it is not held; the others asking meanwhile wait for that one."""
        with self._lock:
            hit = self._hit(key)
            if hit is not None:
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                hit = self._hit(key)
                if hit is not None:
                    return hit
            try:
                encoded = wire.EncodedChunk(load())
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                # Kept and no longer loading in one step: a stream asking in between would
                # otherwise find neither and load the block again.
                self._keep(key, encoded)
                self._loading.pop(key, None)
            return encoded

    def _hit(self, key: BlockKey) -> wire.EncodedChunk | None:
        hit = self._held.get(key)
        if hit is not None:
            self._held.move_to_end(key)
        return hit

    def _keep(self, key: BlockKey, encoded: wire.EncodedChunk) -> None:
        size = len(encoded.raw)
        if size > self.max_bytes or key in self._held:
            return
        while self._bytes + size > self.max_bytes:
            _, old = self._held.popitem(last=False)
            self._bytes -= len(old.raw)
        self._held[key] = encoded
        self._bytes += size


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
    store: ModelStore, tenant: str, run_id: str, version: str, chunk_bytes: int, offset: int = 0,
    shared: SharedBlocks | None = None,
) -> tuple[ModelVersion, Iterator[Message]]:
    """The version's header (the run's latest when ``version`` is empty) and an iterator of its
    chunk messages from byte ``offset`` on (a resumed download), each block checked against the
    version's recorded CRC-32C before it is sent (CorruptModel otherwise). Chunks of the
    version's block size from a block boundary come from ``shared`` when given. Raises
    ModelNotFound, BadOffset for an offset past the model's end."""
    chunk_bytes = check_chunk_bytes(chunk_bytes)
    if not version:
        check_run_id(run_id)
        latest = store.latest(run_id)
        if latest is None:
            raise ModelNotFound(f"run {run_id!r} has no committed model yet")
        version = latest
    reader = store.open(version)
    info = reader.info
    total = reader.layout.total_bytes
    if offset > total:
        reader.close()
        raise BadOffset(f"download offset {offset} is past the end of model {version} ({total} bytes)")
    if shared is not None and info.block_bytes == chunk_bytes and offset % chunk_bytes == 0:
        return info, _shared_messages(reader, tenant, offset // chunk_bytes, shared)

    def messages() -> Iterator[Message]:
        with reader:
            for chunk in reader.iter_chunks(chunk_bytes, offset):
                m.CHUNKS_SENT.labels(tenant).inc()
                m.BYTES_SENT.labels(tenant).inc(len(chunk.data))
                yield wire.ChunkFrame(chunk)

    return info, messages()


def _shared_messages(reader: ModelReader, tenant: str, first: int, shared: SharedBlocks) -> Iterator[Message]:
    info = reader.info
    base = (info.version, info.sha256, info.created_unix, info.block_bytes)
    shared.enter()
    try:
        with reader:
            for i in range(first, reader.block_count()):
                encoded = shared.get((*base, i), partial(reader.verified_block, i))
                m.CHUNKS_SENT.labels(tenant).inc()
                m.BYTES_SENT.labels(tenant).inc(encoded.size)
                yield encoded
    finally:
        shared.leave()
