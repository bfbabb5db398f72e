"""The idle watch counts only the client's silence: time the server spends on a message (a
slow disk, a fold under load) never ends a stream as idle."""

from __future__ import annotations

import threading

from fedstream.errors import FedstreamError, StreamIdle
from fedstream_aggregator.streams import StreamWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ended_after(watch: StreamWatch, clock: Clock, prepare: str, seconds: float) -> FedstreamError | None:
    ended = threading.Event()
    errors: list[FedstreamError] = []

    def end(e: FedstreamError) -> None:
        errors.append(e)
        ended.set()

    stream = watch.open(end)
    getattr(stream, prepare)()
    clock.now += seconds
    ended.wait(1.0)  # the watch looks every idle_s / 4 of real time
    watch.done(stream)
    return errors[0] if errors else None


def test_a_client_silent_past_the_limit_is_ended() -> None:
    clock = Clock()
    watch = StreamWatch(0.2, clock=clock)
    try:
        error = ended_after(watch, clock, "touch", 0.5)
    finally:
        watch.close()
    assert isinstance(error, StreamIdle) and "0.2 s" in error.public


def test_the_servers_own_work_is_not_the_clients_silence() -> None:
    clock = Clock()
    watch = StreamWatch(0.2, clock=clock)
    try:
        # An hour of the server's work on one message (the clock jumps far past the limit).
        assert ended_after(watch, clock, "hold", 3600.0) is None
    finally:
        watch.close()
