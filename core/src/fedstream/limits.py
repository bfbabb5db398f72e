"""Per-agent limits that protect the control plane: token-bucket rates and concurrent streams.

Both hold state per key (an agent id) in bounded maps: when more keys are seen than
``max_keys``, the least recently used are forgotten, which only ever forgives.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedstream.errors import ResourceExhausted

MAX_KEYS = 100_000


class RateLimiter:
    """``rate`` events per second per key, in bursts of at most ``burst``; rate 0 is no limit."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def try_take(self, key: str) -> bool:
        """Takes one event's token; False (nothing taken) when the key is over its rate."""
        if not self.rate:
            return True
        with self._lock:
            now = self.clock()
            tokens = self._level(key, now)
            if tokens < 1.0:
                return False
            self._store(key, tokens - 1.0, now)
            return True

    def delay(self, key: str) -> float:
        """Takes one event's token, borrowing when there is none; returns the seconds to wait
        before the event is within the rate (0 when it already is)."""
        if not self.rate:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens = self._level(key, now) - 1.0
            self._store(key, tokens, now)
            return 0.0 if tokens >= 0 else -tokens / self.rate


class StreamSlots:
    """At most ``limit`` concurrent streams per key and ``total`` over all keys; 0 is no limit.

    ``total`` keeps a share of a thread-pool server's handler threads for everything else
    (health, control): however many keys open streams, they never hold more than ``total``."""

    def __init__(self, limit: int, total: int = 0, on_drained: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.total = total
        # Called (outside the lock) each time the last counted stream ends.
        self.on_drained = on_drained
        self._open: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(
        self, key: str | None, on_refused: Callable[[str], None] = lambda limit: None, count: bool = True
    ) -> Iterator[None]:
        """Holds one of the key's slots (none for key None) and, with ``count``, one of the
        total's for the block. Raises ResourceExhausted when all are taken, after calling
        ``on_refused`` with the limit's name (streams_per_agent or transfer_streams)."""
        with self._lock:
            n = self._open.get(key, 0) if key is not None else 0
            if key is not None and self.limit and n >= self.limit:
                on_refused("streams_per_agent")
                raise ResourceExhausted(f"agent {key!r} already has {n} streams open here (at most {self.limit})")
            if count and self.total and self._all >= self.total:
                on_refused("transfer_streams")
                raise ResourceExhausted(f"this server already has {self._all} transfer streams open (at most {self.total})")
            if key is not None:
                self._open[key] = n + 1
            self._all += count
        try:
            yield
        finally:
            with self._lock:
                self._all -= count
                drained = count and not self._all
                if key is not None:
                    left = self._open[key] - 1
                    if left:
                        self._open[key] = left
                    else:
                        del self._open[key]
            if drained:
                self.on_drained()

    def open(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)
