"""Cost of the state store's writes on each backend: a heartbeat (one statement) and a run
update (a read-modify-write), in milliseconds per call from one thread, for SQLite at both
``synchronous`` levels and for Redis (a local redis-server, without and with an append-only
file flushed at every write).

Usage: python bench/state_writes.py [--writes N]      (part of make bench)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedstream.state import AgentRecord, RunRecord, SQLiteStateStore, StateStore
from fedstream.state.redis import RedisStateStore, connect
from fedstream.state.sqlite_db import Synchronous
from fedstream_testing.servers import RedisServer


def per_call_ms(n: int, call: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - start) / n * 1e3


def measure(name: str, store: StateStore, n: int) -> None:
    store.put_agent(AgentRecord("a"))
    store.create_run(RunRecord("r", spec={"task": "digits"}))
    beat = per_call_ms(n, lambda i: store.heartbeat("a", float(i)))
    update = per_call_ms(n, lambda i: store.update_run("r", reason=f"step {i}"))
    print(f"| {name} | {beat:.3f} | {update:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=1000, help="calls of each kind per backend (default 1000)")
    n = parser.parse_args().writes
    print(f"python bench/state_writes.py --writes {n}")
    print("| backend | heartbeat (ms) | run update (ms) |\n| --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        levels: tuple[Synchronous, ...] = ("normal", "full")
        for sync in levels:
            store = SQLiteStateStore(Path(tmp) / f"{sync}.db", "t", synchronous=sync)
            measure(f"SQLite, synchronous={sync}", store, n)
            store.close()
        for appendonly in (False, True):
            server = RedisServer(Path(tmp) / f"redis-{appendonly}", appendonly=appendonly).start()
            try:
                label = "Redis, append-only file (fsync always)" if appendonly else "Redis, no persistence"
                measure(label, RedisStateStore(connect(server.url), "t"), n)
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
