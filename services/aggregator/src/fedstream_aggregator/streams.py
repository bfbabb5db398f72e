"""Streams watched while they run: an upload that sends nothing for the idle limit is ended, and
so is a download whose client takes nothing for as long, or an upload whose round stops taking
updates, so that its thread, slot and spool are freed."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from fedstream.errors import FedstreamError, StreamIdle

log = logging.getLogger(__name__)

# How often, at most, idle streams are looked for.
CHECK_S = 0.25


class WatchedStream:
    """One open stream: ``touch`` when the server starts waiting on the client, ``hold`` while
    the server works; ``end`` ends it (once) with a reason, which ``ended`` then holds as the
    error the stream's handler raises."""

    def __init__(self, end: Callable[[FedstreamError], None], clock: Callable[[], float], idle: str) -> None:
        self._end = end
        self.idle = idle
        self._clock = clock
        self.last = clock()
        self.ended: FedstreamError | None = None
        self._lock = threading.Lock()

    def touch(self) -> None:
        """The client's turn starts: its silence counts from now."""
        self.last = self._clock()

    def hold(self) -> None:
        """The server's turn: until the next ``touch`` nothing counts as the client's silence
        (the server's own work on a message, a slow disk or a fold under load, never ends a
        stream as idle)."""
        self.last = math.inf

    def end(self, error: FedstreamError) -> None:
        with self._lock:
            if self.ended is not None:
                return
            self.ended = error
        log.info("ending a stream: %s", error.public)
        self._end(error)



class StreamWatch:
    """Ends the streams it watches that send nothing for ``idle_s`` seconds (0: never)."""

    def __init__(self, idle_s: float, on_idle: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.on_idle = on_idle
        self.clock = clock
        self._streams: set[WatchedStream] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, end: Callable[[FedstreamError], None], idle: str = "sent nothing") -> WatchedStream:
        """Watches a new stream, ended by ``end``; ``done`` it when the stream is over. ``idle``
        says what its client did not do, in the error that ends it."""
        stream = WatchedStream(end, self.clock, idle)
        with self._lock:
            self._streams.add(stream)
            if self.idle_s and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="stream-watch", daemon=True)
                self._thread.start()
        return stream

    def done(self, stream: WatchedStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        while not self._stop.wait(min(CHECK_S, self.idle_s / 4)):
            now = self.clock()
            with self._lock:
                idle = [s for s in self._streams if s.ended is None and now - s.last > self.idle_s]
            for s in idle:
                self.on_idle()
                s.end(StreamIdle(f"the stream {s.idle} for {self.idle_s:g} s (limits.stream_idle_s)"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
