"""The delaying relay of the emulated WAN links, on loopback: bytes arrive whole and in order
both ways, held at least the one-way delay each way, counted, and a cut resets connections."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fedstream_testing.wan_relay import DOWN, UP, DelayRelay, echo_round_trips


@pytest.fixture
def relay():
    with DelayRelay() as r:
        yield r


def _through(relay: DelayRelay) -> int:
    return relay.route("127.0.0.1", relay.echo_server(), "echo")


def test_bytes_cross_the_relay_whole_and_in_order_both_ways_and_are_counted(relay):
    relay.delay_s = 0.005
    port = _through(relay)
    payload = os.urandom(3 << 20)
    got = bytearray()

    with socket.create_connection(("127.0.0.1", port)) as s:
        reader = threading.Thread(target=lambda: _read(s, got, len(payload)))
        reader.start()
        s.sendall(payload)
        reader.join(30)

    assert bytes(got) == payload
    # What leaves towards the peer is counted as the peer acknowledges it: the last counts
    # land within a few bins of the last byte.
    give_up = time.monotonic() + 10
    while _counted(relay, DOWN) < len(payload) and time.monotonic() < give_up:
        time.sleep(0.01)
    assert _counted(relay, UP) == len(payload) and _counted(relay, DOWN) == len(payload)


def _counted(relay: DelayRelay, direction: str) -> int:
    return sum(relay.traffic().get(("echo", "127.0.0.1", direction), {}).values())


def _read(s: socket.socket, into: bytearray, n: int) -> None:
    while len(into) < n and (data := s.recv(1 << 20)):
        into += data


def test_a_round_trip_through_the_relay_takes_at_least_both_one_way_delays(relay):
    relay.delay_s = 0.03
    port = _through(relay)

    trips = echo_round_trips("127.0.0.1", port, count=3)

    assert len(trips) == 3 and min(trips) >= 0.06


def test_a_cut_resets_every_open_connection(relay):
    port = _through(relay)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    give_up = time.monotonic() + 10

    while relay.cut() == 0 and time.monotonic() < give_up:
        time.sleep(0.01)

    with pytest.raises(ConnectionResetError):
        s.recv(1)
    assert relay.cuts == 1
    s.close()
