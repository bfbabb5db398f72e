"""Spool files that receive verified chunk streams, pooled for reuse, and their cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from fedstream.errors import ResourceExhausted


class Spool:
    """A file that receives a verified chunk stream.

    Space for the whole update is allocated before the first byte is written, so a full disk
    is known at once and writes never have to grow the file.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".bin")
        self.fd = fd
        self.path = Path(name)
        self.capacity = 0

    @classmethod
    def at(cls, path: Path) -> Spool:
        """A spool in the file at ``path``, created when missing (a partial upload's), its
        capacity the file's size."""
        spool = cls.__new__(cls)
        spool.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        spool.path = path
        spool.capacity = os.fstat(spool.fd).st_size
        return spool

    def reserve(self, size: int) -> None:
        if size > self.capacity:
            try:
                os.posix_fallocate(self.fd, 0, size)
            except OSError as e:
                raise ResourceExhausted(f"no room to receive an update of {size} bytes") from e
            self.capacity = size

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def read_into(self, offset: int, buffer: memoryview) -> None:
        while buffer:
            n = os.preadv(self.fd, [buffer], offset)
            if n == 0:
                raise OSError(f"spool file {self.path} is shorter than expected")
            buffer = buffer[n:]
            offset += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def copy_out(
    read_into: Callable[[int, memoryview], None], total: int, piece_bytes: int, write: Callable[[memoryview], object]
) -> None:
    """Copies ``total`` bytes from ``read_into`` to ``write``, ``piece_bytes`` at a time."""
    piece = bytearray(min(piece_bytes, max(total, 1)))
    for start in range(0, total, len(piece)):
        view = memoryview(piece)[: min(len(piece), total - start)]
        read_into(start, view)
        write(view)


def remove_dead_spools(spool_dir: Path) -> None:
    """Deletes the spool directories of aggregator processes that no longer run (killed ones
    leave theirs behind); each directory is named after its process id."""
    if not spool_dir.is_dir():
        return
    for d in spool_dir.iterdir():
        pid = d.name.split("-", 1)[0]
        if not d.is_dir() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


class SpoolPool:
    """Spool files reused from one upload to the next.

    Rewriting a file whose blocks and cached pages already exist is several times faster than
    writing a new one; up to ``keep`` idle files are kept for that, the rest are deleted.
    """

    def __init__(self, directory: Path, keep: int = 8) -> None:
        self.directory = directory
        self.keep = keep
        self._idle: list[Spool] = []
        self._lock = threading.Lock()

    def acquire(self, size: int) -> Spool:
        """A spool with room for ``size`` bytes; raises ResourceExhausted when the disk has none."""
        with self._lock:
            fitting = [s for s in self._idle if s.capacity >= size]
            spool = min(fitting, key=lambda s: s.capacity) if fitting else (
                max(self._idle, key=lambda s: s.capacity) if self._idle else None
            )
            if spool is not None:
                self._idle.remove(spool)
        if spool is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            spool = Spool(self.directory)
        try:
            spool.reserve(size)
        except ResourceExhausted:
            spool.close()
            raise
        return spool

    def release(self, spool: Spool) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(spool)
                return
        spool.close()

    def close(self) -> None:
        """Deletes the idle files and, when nothing else is in it, the pool's directory."""
        with self._lock:
            idle, self._idle = self._idle, []
        for spool in idle:
            spool.close()
        with contextlib.suppress(OSError):
            self.directory.rmdir()
