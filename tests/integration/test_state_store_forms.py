"""Contract tests of the state store: records as older releases stored them still read, on every backend."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from test_state_store import store

from fedstream.rounds import RoundKind, RoundPlan, RoundState, RunState, UpdateReport
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    MemoryStateStore,
    RoundRecord,
    RunRecord,
    SQLiteStateStore,
    StateStore,
)
from fedstream.state.redis import RedisStateStore

__all__ = ["store"]  # the fixture


# Records as stores wrote them before the round vocabulary was typed and the journal embedded
# its plan: words for kinds and states, reports without a weight, the plan's fields flat.
OLD_RUN = {
    "run_id": "old", "spec": {"task": "digits"}, "state": "succeeded", "reason": "", "latest_version": "old/000001",
    "created_unix": 1.0, "finished_unix": 2.0, "federation": "", "trigger": "api",
}
OLD_ROUND = {
    "run_id": "old", "round": 1, "kind": "train", "state": "training", "participants": ["a", "b"],
    "base_version": "old/000000", "version": "", "reason": "", "stragglers": [], "started_unix": 1.0,
    "finished_unix": 0.0, "deadline_unix": 60.0, "min_updates": 1, "metrics": {},
    "reports": [{"agent_id": "a", "num_examples": 3, "metrics": {"loss": 0.5}, "bytes_received": 7}],
}
OLD_AGGREGATION = {
    "run_id": "old", "round": 1, "kind": "train", "base_version": "old/000000", "participants": ["a", "b"],
    "min_updates": 1, "deadline_unix": 60.0, "strategy": "fedprox", "strategy_params": '{"mu": 0.1}',
    "compression": "none", "state": "training", "version": "", "reason": "", "journal": "", "task": "digits",
    "distill": False, "partial": False,
    "reports": {"a": {"agent_id": "a", "num_examples": 3, "metrics": {"loss": 0.5}, "bytes_received": 7}},
}


OLD_AGENT = {
    "agent_id": "old-site", "labels": {}, "capabilities": {"device": "cpu"}, "tasks": ["digits"],
    "registered_unix": 1.0, "disabled": False, "cert_serials": [], "enrolled_unix": 0.0,
}


def store_raw_agent(store: StateStore, record: dict, heartbeat: float) -> None:
    """Puts an agent's record into a backend as it was stored (its heartbeat beside it)."""
    if isinstance(store, SQLiteStateStore):
        with sqlite3.connect(store.db.path) as conn:
            conn.execute("INSERT INTO agents VALUES ('t1', ?, ?, ?)",
                         (record["agent_id"], json.dumps(record), heartbeat))
    elif isinstance(store, RedisStateStore):
        key = f"fedstream:t1:agent:{record['agent_id']}"
        store.r.hset(key, mapping={"record": json.dumps(record), "heartbeat": repr(heartbeat)})
        store.r.sadd("fedstream:t1:agents", record["agent_id"])
    else:
        assert isinstance(store, MemoryStateStore)
        store._agents[record["agent_id"]] = AgentRecord(**record, last_heartbeat_unix=heartbeat)


def store_raw(store: StateStore, key: str, record: dict, sorted_in: tuple[str, str, float] | None = None,
              listed_in: str = "") -> None:
    """Puts a record into a backend as it was stored. Redis gets the JSON under ``key`` and the
    record into its index (``sorted_in``: sorted set, member and score; ``listed_in``: a set of
    keys); SQLite gets the JSON in the record's row; the in-process store keeps no JSON, so it
    gets the record as a backend reads one."""
    if isinstance(store, SQLiteStateStore):
        with sqlite3.connect(store.db.path) as conn:
            if key.startswith("run:"):
                conn.execute("INSERT INTO runs VALUES ('t1', ?, ?, ?)",
                             (record["run_id"], record["created_unix"], json.dumps(record)))
            elif key.startswith("round:"):
                conn.execute("INSERT INTO rounds VALUES ('t1', ?, ?, ?)",
                             (record["run_id"], record["round"], json.dumps(record)))
            else:
                conn.execute("INSERT INTO aggregations VALUES ('t1', '', ?, ?, 0, ?)",
                             (record["run_id"], record["round"], json.dumps(record)))
        return
    if isinstance(store, RedisStateStore):
        store.r.set(f"fedstream:t1:{key}", json.dumps(record))
        if sorted_in is not None:
            name, member, score = sorted_in
            store.r.zadd(f"fedstream:t1:{name}", {member: score})
        if listed_in:
            store.r.sadd(f"fedstream:t1:{listed_in}", f"fedstream:t1:{key}")
        return
    assert isinstance(store, MemoryStateStore)
    if key.startswith("run:"):
        store._runs[record["run_id"]] = RunRecord.from_dict(record)
    elif key.startswith("round:"):
        store._rounds[(record["run_id"], record["round"])] = RoundRecord.from_dict(record)
    else:
        store._aggregations[("", record["run_id"], record["round"])] = AggregationRecord.from_dict(record)


class TestStoredForms:
    """Records written before the typed records are read, and changed, as they were meant."""

    def test_an_old_run_and_round_load(self, store):
        store_raw(store, "run:old", OLD_RUN, sorted_in=("runs", "old", 1.0))
        store_raw(store, "round:old:000001", OLD_ROUND, sorted_in=("rounds:old", "1", 1.0))

        assert store.get_run("old").state is RunState.SUCCEEDED
        assert [r.run_id for r in store.list_runs()] == ["old"]
        rnd = store.get_round("old", 1)
        assert (rnd.kind, rnd.state) == (RoundKind.TRAIN, RoundState.TRAINING)
        assert rnd.reports == [UpdateReport("a", 3, {"loss": 0.5}, 7, weight=3.0)]
        assert store.list_rounds("old") == [rnd]
        assert rnd.target_updates == 0  # written before over-selection: every participant's update
        done = store.transition_round("old", 1, RoundState.AGGREGATING)
        assert done.state is RoundState.AGGREGATING and done.reports == rnd.reports

    def test_an_old_agent_loads_without_speeds_and_keeps_them_once_measured(self, store):
        store_raw_agent(store, OLD_AGENT, heartbeat=9.0)

        got = store.get_agent("old-site")
        assert (got.speeds, got.tasks, got.last_heartbeat_unix) == ({}, ["digits"], 9.0)
        store.update_agent("old-site", lambda r: dataclasses.replace(r, speeds={"digits": 3.0}))
        assert store.get_agent("old-site").speeds == {"digits": 3.0}

    def test_an_old_flat_aggregation_record_loads(self, store):
        store_raw(store, "aggregation:old:000001", OLD_AGGREGATION, listed_in="aggregations")

        rec = store.get_aggregation("old", 1)
        assert rec.plan == RoundPlan(
            "old", 1, RoundKind.TRAIN, "old/000000", ("a", "b"), 1, 60.0, strategy="fedprox",
            strategy_params='{"mu": 0.1}', task="digits",
        )
        assert rec.plan.target_updates == 0 and rec.plan.closes_at == 2
        assert (rec.run_id, rec.round, rec.state, rec.journal) == ("old", 1, RoundState.TRAINING, "")
        assert rec.reports == {"a": UpdateReport("a", 3, {"loss": 0.5}, 7, weight=3.0)}
        assert store.list_aggregations() == [rec]
        assert store.count_update("old", 1, "a", UpdateReport("a", 9)) is False
        assert store.count_update("old", 1, "b", UpdateReport("b", 4, weight=4.0)) is True
        store.set_aggregation_state("old", 1, RoundState.AGGREGATING)
        got = store.get_aggregation("old", 1)
        assert got.plan == rec.plan and got.state is RoundState.AGGREGATING
        assert list(got.reports) == ["a", "b"] and got.reports["b"] == UpdateReport("b", 4, weight=4.0)
