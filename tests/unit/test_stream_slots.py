"""StreamSlots tells when its last counted stream ends, so that a server can give memory back."""

from __future__ import annotations

from fedstream.limits import StreamSlots
from fedstream.memtune import release_free_memory


def test_on_drained_is_called_once_the_last_counted_stream_ends():
    calls: list[int] = []
    slots = StreamSlots(2, 4, on_drained=lambda: calls.append(slots.open("a")))

    with slots.hold("a"):
        with slots.hold("b"):
            pass
        with slots.hold("a", count=False):
            pass
        assert calls == []

    assert calls == [0]


def test_release_free_memory_returns():
    release_free_memory()
