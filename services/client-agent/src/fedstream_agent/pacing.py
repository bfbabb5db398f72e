"""Emulated slow sites, for tests and benchmarks (setting ``slowdown``): local training made to
take a multiple of its measured time, the wait ending early when the round's work is over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How often the wait checks whether the round's work is over.
CHECK_EVERY_S = 0.1


def stretch(elapsed: float, factor: float, check: Callable[[], None], stop: threading.Event,
            clock: Callable[[], float] = time.monotonic) -> float:
    """Waits ``(factor - 1) * elapsed`` seconds, calling ``check`` every CHECK_EVERY_S (it
    raises to end the wait: the round closed or was cancelled); returns the seconds waited,
    fewer when ``stop`` was set (the agent is shutting down)."""
    started = clock()
    until = started + max(0.0, factor - 1.0) * elapsed
    while (left := until - clock()) > 0:
        check()
        if stop.wait(min(left, CHECK_EVERY_S)):
            break
    return clock() - started
