"""Partial uploads: what a cut resumable upload left, kept so that it resumes where it stopped.

A resumable upload (one whose header names an ``upload_id``) is spooled into a file of its
own under ``<spool_dir>/partial/<journal>/``, beside a log of the chunks verified into it
(offset, length, CRC-32C: 16 bytes each, appended after the chunk's bytes were written) and a
small record of whose upload it is. The bytes and the log are in the operating system's cache
once written, so they survive the aggregator's process; a restarted aggregator reads the logs
again and checks every logged chunk's bytes against its CRC, so a power cut that lost the tail
resumes from the last chunk still sound. A partial upload is dropped once its update counts,
once its round stops taking updates, ``ttl_s`` after its last chunk, or when another update of
the same agent for the round replaces it; all of them together hold at most ``max_bytes``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fedstream.errors import FedstreamError, InvalidArgument, ResourceExhausted, ResumeRefused
from fedstream.metrics import LIMIT_HITS
from fedstream.tensors import ChunkReceiver, Layout, crc32c
from fedstream_aggregator import background
from fedstream_aggregator.rounds import RoundTable
from fedstream_aggregator.spool import Spool, SpoolPool

log = logging.getLogger(__name__)

MAX_UPLOAD_ID_LENGTH = 128
DEFAULT_TTL_S = 600.0
DEFAULT_MAX_BYTES = 64 << 30
_ENTRY = struct.Struct("<QII")  # a verified chunk: offset, length, CRC-32C
Key = tuple[str, int, str]  # run, round, agent


@dataclass(eq=False)
class Partial:
    """One resumable upload's file, its log and how far it is verified."""

    key: Key
    upload_id: str
    layout_digest: str
    total: int
    spool: Spool
    stem: Path
    offset: int = 0
    touched: float = 0.0
    streaming: bool = False
    log_fd: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, offset: int, data: bytes | memoryview, crc: int) -> None:
        """Writes a chunk verified against ``crc`` (its CRC-32C), then logs it: a logged
        chunk's bytes are in the file."""
        self.spool.write(offset, data)
        os.write(self.log_fd, _ENTRY.pack(offset, len(data), crc))
        self.offset = offset + len(data)

    def close_log(self) -> None:
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1


def layout_digest(layout: Layout) -> str:
    """What a resumed upload's layout must match: the kept bytes are laid out by it."""
    return hashlib.sha256(layout.to_proto().SerializeToString(deterministic=True)).hexdigest()


def _unlink(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class PartialUploads:
    """The resumable uploads of this aggregator's rounds, bounded in time and space."""

    def __init__(
        self, directory: Path, table: RoundTable, *, tenant: str,
        ttl_s: float = DEFAULT_TTL_S, max_bytes: int = DEFAULT_MAX_BYTES, spools: SpoolPool | None = None,
    ) -> None:
        """``spools``: where a new partial upload takes its file from (an idle one, moved here,
        whose blocks and cached pages exist already: rewriting them is much cheaper than
        writing a new file); a counted upload's file goes back there (``done``)."""
        self.directory = directory
        self.spools = spools
        self.table = table
        self.tenant = tenant
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._held: dict[Key, Partial] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(p.total for p in self._held.values())

    def offset(self, key: Key, upload_id: str) -> int:
        """Where ``upload_id`` resumes: its verified bytes, 0 when none are kept."""
        with self._lock:
            partial = self._held.get(key)
            return partial.offset if partial is not None and partial.upload_id == upload_id else 0

    def streaming_id(self, key: Key) -> str:
        """The upload id of the agent's resumable upload streaming now, "" when none."""
        with self._lock:
            partial = self._held.get(key)
            return partial.upload_id if partial is not None and partial.streaming else ""

    def open(self, key: Key, upload_id: str, layout_digest: str, total: int, resume_offset: int) -> Partial:
        """The partial upload a stream continues (``resume_offset`` > 0: it must be exactly
        what is kept of ``upload_id``, else ResumeRefused) or starts afresh (0: whatever was
        kept for the agent's round is dropped). Raises ResourceExhausted naming
        partial_upload_max_bytes when its space would pass the bound, InvalidArgument for an
        id that is too long."""
        if len(upload_id) > MAX_UPLOAD_ID_LENGTH:
            raise InvalidArgument(f"upload_id has {len(upload_id)} characters; at most {MAX_UPLOAD_ID_LENGTH}")
        self.sweep()
        with self._lock:
            held = self._held.get(key)
            if resume_offset:
                return self._resume(key, held, upload_id, layout_digest, resume_offset)
            if held is not None:
                self._drop_locked(held)
            used = sum(p.total for p in self._held.values())
            if used + total > self.max_bytes:
                LIMIT_HITS.labels(self.tenant, "aggregator", "partial_upload_max_bytes").inc()
                raise ResourceExhausted(
                    f"resumable uploads held here take {used} bytes and this one declares {total}; this "
                    f"aggregator keeps at most {self.max_bytes} (partial_upload_max_bytes)"
                )
            partial = self._create(key, upload_id, layout_digest, total)
            partial.streaming = True
            self._held[key] = partial
            return partial

    def _resume(self, key: Key, held: Partial | None, upload_id: str, layout_digest: str, offset: int) -> Partial:
        if held is None or held.upload_id != upload_id or held.layout_digest != layout_digest:
            raise ResumeRefused(
                f"no partial upload {upload_id!r} is kept here to resume from offset {offset} (it expired, "
                "was replaced or never arrived); ask UploadStatus where to resume"
            )
        if held.streaming:
            raise ResumeRefused(f"upload {upload_id!r} is still streaming here; ask UploadStatus again shortly")
        if held.offset != offset:
            raise ResumeRefused(
                f"upload {upload_id!r} resumes from offset {held.offset} here, not {offset}; ask UploadStatus"
            )
        held.streaming = True
        return held

    def _create(self, key: Key, upload_id: str, layout_digest: str, total: int) -> Partial:
        run_id, round_, agent = key
        name = base64.urlsafe_b64encode(hashlib.sha256(repr(key).encode()).digest()[:18]).decode()
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self.directory / name
        _unlink(stem.with_suffix(".bin"), stem.with_suffix(".log"), stem.with_suffix(".json"))
        spool = self._file_for(stem.with_suffix(".bin"), total)
        record = {"run_id": run_id, "round": round_, "agent_id": agent, "upload_id": upload_id,
                  "layout_digest": layout_digest, "total_bytes": total}
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, stem.with_suffix(".json"))
        log_fd = os.open(stem.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        return Partial(key, upload_id, layout_digest, total, spool, stem, touched=self.table.clock(), log_fd=log_fd)

    def _file_for(self, path: Path, total: int) -> Spool:
        """A spool at ``path`` with room for ``total`` bytes: the pool's idle file moved there
        when it has one, else a new file. Raises ResourceExhausted when the disk has no room."""
        if self.spools is not None:
            spool = self.spools.acquire(total)
            try:
                os.replace(spool.path, path)
            except OSError:  # another file system: a file of its own then
                spool.close()
            else:
                spool.path = path
                return spool
        spool = Spool.at(path)
        try:
            spool.reserve(total)
        except ResourceExhausted:
            spool.close()
            raise
        return spool

    def suspend(self, partial: Partial) -> None:
        """A stream of ``partial`` ended before its last byte: it is kept for a resume."""
        with self._lock:
            partial.streaming = False
            partial.touched = self.table.clock()
            if self._held.get(partial.key) is not partial:
                self._forget(partial)  # replaced, or this process is closing

    def drop(self, partial: Partial) -> None:
        """Forgets ``partial`` and deletes its files (an update refused once whole)."""
        with self._lock:
            partial.streaming = False
            if self._held.get(partial.key) is partial:
                del self._held[partial.key]
                self._discard(partial)
            else:
                self._forget(partial)

    def _forget(self, partial: Partial) -> None:
        """A partial upload no longer held: its files are deleted unless they are another's now
        (the same agent's newer upload) or the next process's (this one is closing)."""
        if self._closed or partial.key in self._held:
            partial.close_log()
            if partial.spool.fd >= 0:
                os.close(partial.spool.fd)
                partial.spool.fd = -1
        else:
            self._discard(partial)

    def done(self, partial: Partial, into: Path) -> Spool:
        """``partial`` counted: its log and record are deleted and its file, moved into ``into``
        (the spool pool's directory), is the caller's."""
        with self._lock:
            if self._held.get(partial.key) is partial:
                del self._held[partial.key]
        partial.close_log()
        into.mkdir(parents=True, exist_ok=True)
        target = into / f"upload-{partial.stem.name}.bin"
        os.replace(partial.spool.path, target)
        partial.spool.path = target
        _unlink(partial.stem.with_suffix(".log"), partial.stem.with_suffix(".json"))
        return partial.spool

    def _drop_locked(self, partial: Partial) -> None:
        if self._held.get(partial.key) is partial:
            del self._held[partial.key]
        if not partial.streaming:
            self._discard(partial)
        # A streaming one is discarded by its stream when it ends (suspend sees it gone).

    @staticmethod
    def _discard(partial: Partial) -> None:
        partial.close_log()
        partial.spool.close()
        _unlink(partial.stem.with_suffix(".log"), partial.stem.with_suffix(".json"))

    def sweep(self) -> int:
        """Drops the partial uploads idle for ``ttl_s`` and those of rounds that no longer take
        updates; returns how many."""
        now = self.table.clock()
        with self._lock:
            gone = [p for p in self._held.values() if not p.streaming and (
                now - p.touched >= self.ttl_s or not self._round_takes(p.key, now))]
            for partial in gone:
                self._drop_locked(partial)
        for partial in gone:
            log.info("partial upload %s of agent %r for round %d of %s dropped (%d of %d bytes)",
                     partial.upload_id, partial.key[2], partial.key[1], partial.key[0], partial.offset, partial.total)
        return len(gone)

    def _round_takes(self, key: Key, now: float) -> bool:
        rnd = self.table.find(key[0], key[1])
        if rnd is None:
            return False
        if rnd.plan.buffer is not None:
            return True  # a buffered update counts in a later buffer: kept until its time-to-live
        try:
            rnd.check_accepting(now)
        except FedstreamError:
            return False
        return key[2] not in rnd.reports

    def start(self) -> None:
        """Sweeps every quarter of the time-to-live (at most every 30 s) until ``close``."""
        if self._closed or not self.enabled:
            return
        self._timer = background.after(max(0.05, min(self.ttl_s / 4, 30.0)), self._tick)

    def _tick(self) -> None:
        self.sweep()
        self.start()

    def close(self) -> None:
        """Stops sweeping; the files stay for the next process (they resume after a restart)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for partial in held:
            partial.close_log()
            with contextlib.suppress(OSError):
                os.close(partial.spool.fd)
            partial.spool.fd = -1

    def reload(self) -> int:
        """After a restart: takes back the partial uploads left in the directory whose rounds
        still take updates, each from its last chunk whose bytes match the logged CRC-32C;
        deletes the others. Returns how many were taken back."""
        kept = _load_all(self.directory)
        taken = 0
        now = self.table.clock()
        with self._lock:
            for partial in kept:
                if self._round_takes(partial.key, now) and partial.key not in self._held:
                    self._held[partial.key] = partial
                    taken += 1
                else:
                    self._discard(partial)
        return taken


def _load_all(directory: Path) -> list[Partial]:
    """The partial uploads a previous process left in ``directory``; stray files are deleted."""
    if not directory.is_dir():
        return []
    found = []
    for record in directory.glob("*.json"):
        stem = record.with_suffix("")
        try:
            partial = _load(stem)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("partial upload %s cannot be taken back (%s); deleted", stem.name, e)
            partial = None
        if partial is None:
            _unlink(stem.with_suffix(".bin"), stem.with_suffix(".log"), record)
        else:
            found.append(partial)
    names = {p.stem.name for p in found}
    for stray in directory.iterdir():
        if stray.name.split(".", 1)[0] not in names:
            _unlink(stray)
    return found


def _load(stem: Path) -> Partial | None:
    """One partial upload from its files, verified up to its last sound chunk."""
    record = json.loads(stem.with_suffix(".json").read_text())
    key: Key = (str(record["run_id"]), int(record["round"]), str(record["agent_id"]))
    total = int(record["total_bytes"])
    spool = Spool.at(stem.with_suffix(".bin"))
    if spool.capacity < total:
        spool.close()
        return None
    raw = stem.with_suffix(".log").read_bytes()
    offset = sound = 0
    for pos in range(0, len(raw) - len(raw) % _ENTRY.size, _ENTRY.size):
        at, size, crc = _ENTRY.unpack_from(raw, pos)
        if at != offset or at + size > total:
            break
        piece = memoryview(bytearray(size))
        spool.read_into(at, piece)
        if crc32c(piece) != crc:
            break
        offset, sound = at + size, pos + _ENTRY.size
    log_path = stem.with_suffix(".log")
    touched = log_path.stat().st_mtime
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.ftruncate(log_fd, sound)
    return Partial(key, str(record["upload_id"]), str(record["layout_digest"]), total, spool, stem,
                   offset=offset, touched=touched, log_fd=log_fd)


def receive_into(
    layout: Layout, resume_offset: int, chunks: Iterable[tuple[int, bytes, int]], spool: Spool, partial: Partial | None
) -> ChunkReceiver:
    """Verifies an upload's chunks (order, bounds, checksum) into its spool file until it is
    whole; a resumable upload's partial takes them from ``resume_offset`` on (its log keeps the
    verified CRCs, not computed again). Returns the receiver, finished."""
    if partial is not None:
        receiver = ChunkReceiver(layout, None, resume_offset, crc_sink=partial.write)
    else:
        receiver = ChunkReceiver(layout, spool.write)
    for offset, data, crc in chunks:
        receiver.accept(offset, data, crc)
    receiver.finish()
    return receiver
