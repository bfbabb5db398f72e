"""A TCP relay that holds each direction's bytes for a one-way delay: emulated WAN latency
where the kernel's delay queue (netem) is missing. Also a TCP echo to measure what it adds.

Each accepted connection is joined to its target by two pumps, one per direction. A pump
reads what arrives, stamps it with the time it may leave (now + the one-way delay) and
writes it out, in order, no earlier than that; it stops reading while more than
``hold_bytes`` wait in it, so a slow receiver slows the sender as over a real link
(backpressure). The relay counts the bytes of each route, peer and direction in 10 ms bins
on the side facing the peer (what arrives from it; what it acknowledged, sampled from the
kernel's TCP counters, so the kernel's send buffer does not run ahead of the link), so a
benchmark can see when a link was busy. ``cut`` resets every connection at once, as a dropped link.

Run as ``python -m fedstream_testing.wan_relay echo HOST PORT [COUNT]`` it measures TCP
round trips to an echo server (``DelayRelay.echo_server``) and prints them as JSON.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
BIN_S = 0.01
READ_BYTES = 256 << 10
# Linux's struct tcp_info: tcpi_bytes_acked, a u64 at this offset (kernel 4.1 and later).
TCP_INFO_LEN, BYTES_ACKED_AT = 136, 120
UP, DOWN = "up", "down"

Bins = dict[int, int]


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class DelayRelay:
    """Routes from listening sockets to targets, each connection delayed ``delay_s`` each way.

    Runs its own event loop in a thread; every method may be called from any other thread.
    """

    def __init__(self, hold_bytes: int = 32 << 20) -> None:
        self.delay_s = 0.0
        self.hold_bytes = hold_bytes
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="wan-relay")
        self._servers: list[asyncio.Server] = []
        self._conns: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], _AckCounter] = {}
        self._traffic: dict[tuple[str, str, str], Bins] = collections.defaultdict(dict)
        self._cutter: asyncio.Task[None] | None = None

    def start(self) -> DelayRelay:
        self._thread.start()
        return self

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def route(self, listen_host: str, target: str, name: str) -> int:
        """Listens on ``listen_host`` (a free port) and relays each connection to ``target``
        (host:port); returns the port. ``name`` labels its traffic."""
        host, port = target.rsplit(":", 1)
        return self._call(self._listen(listen_host, (host, int(port)), name))

    async def _listen(self, listen_host: str, target: tuple[str, int], name: str) -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(reader, writer, target, name)

        server = await asyncio.start_server(accept, listen_host, 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def echo_server(self) -> str:
        """A TCP echo server on loopback (host:port), to measure round trips through a route."""
        return self._call(self._echo())

    async def _echo(self) -> str:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(READ_BYTES):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.transport.abort()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        self._servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     target: tuple[str, int], name: str) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            _reset_on_close(writer)
            writer.transport.abort()
            return
        up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = (writer, up_writer)
        self._conns[conn] = acked = _AckCounter(sock, self._traffic[(name, peer, DOWN)])
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, self._traffic[(name, peer, UP)]),
                self._pump(up_reader, writer, None, acked.wrote),
                return_exceptions=True,
            )
        finally:
            acked.stop()
            self._conns.pop(conn, None)
            for w in conn:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bins: Bins | None,
                    wrote: Callable[[int], None] | None = None) -> None:
        """Copies ``reader`` to ``writer``, each piece no earlier than ``delay_s`` after it
        arrived, in order; reads pause while ``hold_bytes`` are waiting. What it reads is
        counted in ``bins``; what it writes is told to ``wrote``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        held = 0

        async def send() -> None:
            nonlocal held
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if wrote is not None:
                    wrote(len(data))
                writer.write(data)
                await writer.drain()
                held -= len(data)
                if held < self.hold_bytes:
                    room.set()

        sender = asyncio.create_task(send())
        try:
            while True:
                while held >= self.hold_bytes:
                    room.clear()
                    await room.wait()
                data = await reader.read(READ_BYTES)
                if bins is not None and data:
                    _count(bins, len(data))
                held += len(data)
                queue.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def cut(self) -> int:
        """Resets every open connection (both sides get a TCP reset); how many there were."""
        return self._call(self._cut())

    async def _cut(self) -> int:
        conns = list(self._conns.items())
        for conn, acked in conns:
            acked.stop()
            for w in conn:
                _reset_on_close(w)
                w.transport.abort()
        self._conns.clear()
        if conns:
            self.cuts += 1
        return len(conns)

    def cut_every(self, seconds: float | None) -> None:
        """Cuts every connection each ``seconds`` from now on; None stops cutting."""
        self._call(self._set_cutter(seconds))

    async def _set_cutter(self, seconds: float | None) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
            self._cutter = None
        if seconds:
            self._cutter = asyncio.create_task(self._cut_loop(seconds))

    async def _cut_loop(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._cut()

    def traffic(self) -> dict[tuple[str, str, str], Bins]:
        """A copy of the byte counts: (route, peer, "up" or "down") -> {10 ms bin: bytes}."""
        return self._call(self._snapshot())

    async def _snapshot(self) -> dict[tuple[str, str, str], Bins]:
        return {k: dict(v) for k, v in self._traffic.items()}

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._close(), timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self) -> None:
        await self._set_cutter(None)
        for server in self._servers:
            server.close()
        await self._cut()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _count(bins: Bins, n: int) -> None:
    b = int(time.time() / BIN_S)
    bins[b] = bins.get(b, 0) + n


def _bytes_acked(sock: socket.socket) -> int:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except OSError:  # closed
        return -1
    return int(struct.unpack_from("Q", info, BYTES_ACKED_AT)[0]) if len(info) >= BYTES_ACKED_AT + 8 else -1


class _AckCounter:
    """Counts in ``bins``, every bin and once more when stopped, the bytes a socket's peer
    acknowledged since the last count."""

    def __init__(self, sock: socket.socket, bins: Bins) -> None:
        self._sock, self._bins, self._last = sock, bins, 0
        self._written = 0
        self._task = asyncio.create_task(self._run())

    def wrote(self, n: int) -> None:
        """``n`` more bytes were written to the socket: at most that many can be acknowledged
        (the kernel's count also takes in the FIN once the connection closes)."""
        self._written += n

    async def _run(self) -> None:
        while True:  # polling: the kernel has no event for acknowledgements
            if not self.sample():
                return
            await asyncio.sleep(BIN_S)

    def sample(self) -> bool:
        acked = _bytes_acked(self._sock)
        if acked < 0:
            return False
        acked = min(acked, self._written)
        if acked > self._last:
            _count(self._bins, acked - self._last)
            self._last = acked
        return True

    def stop(self) -> None:
        if not self._task.done():
            self.sample()
            self._task.cancel()


def echo_round_trips(host: str, port: int, count: int = 10, size: int = 64) -> list[float]:
    """Round trips (seconds) of ``count`` messages of ``size`` bytes to an echo server, one
    at a time over one TCP connection."""
    out = []
    with socket.create_connection((host, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(b"x" * size)
            got = 0
            while got < size:
                data = s.recv(size - got)
                if not data:
                    raise ConnectionError("the echo server closed the connection")
                got += len(data)
            out.append(time.perf_counter() - start)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "echo":
        print("usage: python -m fedstream_testing.wan_relay echo HOST PORT [COUNT]", file=sys.stderr)
        return 2
    print(json.dumps(echo_round_trips(argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 10)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
