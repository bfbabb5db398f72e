"""Allocator tuning for processes that stream model-sized data.

Chunks are about 1 MiB, above glibc's default mmap threshold (128 KiB), so each chunk buffer
would be a fresh mmap: page faults and zeroing on every chunk, several times per chunk, which
costs more than moving the bytes. Serving such chunks from the heap, and keeping freed heap
at the top for reuse, more than doubles streaming throughput (see docs/benchmarks.md). Few
arenas keep that reuse from multiplying memory by the number of streaming threads.

What that keeps (up to the trim threshold per arena, and free pages between live blocks) is
given back by ``release_free_memory`` once a process's large work is over: a server calls it
when its last transfer stream ends and when a round's memory is freed, so that resident memory
returns near its idle figure after any request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
# Each arena keeps its own free memory; with one arena per streaming thread, resident memory
# would grow with the number of concurrent streams. Two arenas keep it flat.
ARENA_MAX = 2


def tune_allocator() -> bool:
    """Raises glibc's mmap and trim thresholds and caps its arenas, unless the environment
    sets any of them already.

    Returns True when applied; does nothing on other C libraries.
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(option, value) == 1
        for option, value in (
            (_M_ARENA_MAX, ARENA_MAX),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    log.debug("allocator tuning %s", "applied" if ok else "refused")
    return ok


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Gives the allocator's free memory back to the system (glibc's malloc_trim: the free
    top of every arena and the free pages between live blocks); nothing on other C libraries.
    Costs milliseconds on a heap of hundreds of MiB: call it when large work ends, not per chunk."""
    if _TRIM is not None:
        _TRIM(0)
