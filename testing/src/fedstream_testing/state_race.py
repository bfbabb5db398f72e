"""A process that works on a SQLite state file while others do, for the tests of sharing one
file between processes (the scheduler and the aggregator of one machine).

``python -m fedstream_testing.state_race race PATH NAME N GO``: prints ``ready``, waits until
the file GO exists, then makes N attempts at each contended operation, interleaved, and prints
what it won as one JSON object. ``... commit PATH``: creates runs ``c0``, ``c1``, ... and
prints each one's number once it is committed, until killed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

from fedstream.errors import AlreadyExists, InvalidTransition
from fedstream.rounds import RoundKind, RoundPlan, RoundState, UpdateReport
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    EnrollmentTokenRecord,
    RoundRecord,
    RunRecord,
    SQLiteStateStore,
    StateStore,
)

RUN = "race"


def prepare(store: StateStore, n: int) -> None:
    """What the racers contend for: a journal of round 1 with N participants, rounds 0..N-1
    open, N enrollment tokens, and an agent whose record every racer appends to."""
    participants = tuple(f"a{i}" for i in range(n))
    store.create_aggregation(AggregationRecord(RoundPlan(RUN, 1, RoundKind.TRAIN, f"{RUN}/000000", participants, n, 0.0)))
    for i in range(n):
        store.create_round(RoundRecord(RUN, i, RoundKind.TRAIN))
        store.create_enrollment_token(EnrollmentTokenRecord(f"e{i}", f"hash-{i}", 0.0))
    store.put_agent(AgentRecord("shared"))


def race(store: StateStore, name: str, n: int) -> dict[str, list[int]]:
    """N attempts at each contended operation; the numbers of those this process won."""
    wins: dict[str, list[int]] = {k: [] for k in ("agents", "marks", "leases", "updates", "transitions", "tokens")}
    for i in range(n):
        try:
            store.create_agent(AgentRecord(f"a{i}", cert_serials=[name]))
            wins["agents"].append(i)
        except AlreadyExists:
            pass
        if store.mark_once("race", f"k{i}"):
            wins["marks"].append(i)
        if store.acquire_lease(f"lease-{i}", name, 600.0, time.time()):
            wins["leases"].append(i)
        if store.count_update(RUN, 1, f"a{i}", UpdateReport(f"a{i}", 1)):
            wins["updates"].append(i)
        try:
            store.transition_round(RUN, i, RoundState.TRAINING)
            wins["transitions"].append(i)
        except InvalidTransition:
            pass
        if store.consume_enrollment_token(f"hash-{i}") is not None:
            wins["tokens"].append(i)
        store.update_agent("shared", functools.partial(_append, f"{name}-{i}"))
    return wins


def _append(serial: str, agent: AgentRecord) -> AgentRecord:
    return dataclasses.replace(agent, cert_serials=[*agent.cert_serials, serial])


def main(argv: list[str]) -> int:
    mode, path = argv[0], Path(argv[1])
    store = SQLiteStateStore(path)
    if mode == "commit":
        for i in range(1_000_000):
            store.create_run(RunRecord(f"c{i}", {}, created_unix=float(i)))
            print(i, flush=True)
        return 0
    name, n, go = argv[2], int(argv[3]), Path(argv[4])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    print(json.dumps(race(store, name, n)), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
