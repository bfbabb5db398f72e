"""Contract tests of the state store, one suite per role, each run against every backend."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable

import pytest

from fedstream.errors import (
    AgentNotFound,
    AlreadyExists,
    InvalidTransition,
    NotFound,
    RoundNotFound,
    RoundNotOpen,
    RunNotFound,
    Unavailable,
)
from fedstream.rounds import RoundKind, RoundPlan, RoundState, RunState, UpdateReport
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    AuditEntry,
    EnrollmentTokenRecord,
    FederationRecord,
    MemoryStateStore,
    RoundRecord,
    RunRecord,
    SQLiteStateStore,
    StateStore,
    TokenRecord,
)
from fedstream.state.redis import RedisStateStore, connect
from fedstream_testing.servers import free_port


@pytest.fixture
def store(state_store: StateStore) -> StateStore:
    return state_store


def in_threads(n: int, target: Callable[[], object]) -> None:
    """Runs ``target`` in ``n`` threads at once and waits for them all."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def journal(round_: int = 1) -> AggregationRecord:
    return AggregationRecord(RoundPlan("r", round_, RoundKind.TRAIN, "r/000000", ("a", "b"), 2, 123.0))


class TestAgentRegistry:
    """AgentRegistry: agents, heartbeats, atomic updates."""

    def test_agents_register_heartbeat_and_list(self, store):
        store.put_agent(AgentRecord("b", labels={"site": "x"}, registered_unix=1.0))
        store.put_agent(AgentRecord("a"))
        store.heartbeat("b", 42.0)

        assert [a.agent_id for a in store.list_agents()] == ["a", "b"]
        assert store.get_agent("b").last_heartbeat_unix == 42.0
        assert store.get_agent("b").labels == {"site": "x"}
        with pytest.raises(AgentNotFound):
            store.heartbeat("nobody", 1.0)
        with pytest.raises(AgentNotFound):
            store.get_agent("nobody")

    def test_agent_updates_are_atomic_and_a_failed_one_changes_nothing(self, store):
        store.put_agent(AgentRecord("a", cert_serials=["1"]))
        store.heartbeat("a", 7.0)

        def add(n: int) -> None:
            for i in range(n):
                store.update_agent("a", lambda r, i=i: dataclasses.replace(r, cert_serials=[*r.cert_serials, f"{i}"]))

        in_threads(4, lambda: add(25))

        def refuse(r: AgentRecord) -> AgentRecord:
            raise NotFound("no")

        with pytest.raises(NotFound):
            store.update_agent("a", refuse)
        with pytest.raises(AgentNotFound):
            store.update_agent("nobody", lambda r: r)
        got = store.get_agent("a")
        assert len(got.cert_serials) == 1 + 4 * 25  # no update lost
        assert got.last_heartbeat_unix == 7.0  # the heartbeat is kept
        store.delete_agent("a")
        with pytest.raises(AgentNotFound):
            store.delete_agent("a")
        assert store.list_agents() == []

    def test_an_agent_is_created_once_and_never_replaced_by_a_creation(self, store):
        store.create_agent(AgentRecord("a1", labels={"site": "x"}, cert_serials=["s1"]))
        with pytest.raises(AlreadyExists, match="a1"):
            store.create_agent(AgentRecord("a1", cert_serials=["intruder"]))
        assert store.get_agent("a1").cert_serials == ["s1"]
        assert [a.agent_id for a in store.list_agents()] == ["a1"]
        store.heartbeat("a1", 5.0)
        assert store.get_agent("a1").last_heartbeat_unix == 5.0

    def test_racing_creations_of_one_agent_have_one_winner(self, store):
        wins, barrier = [], threading.Barrier(8)

        def race(serial: str) -> None:
            barrier.wait()
            try:
                store.create_agent(AgentRecord("a1", cert_serials=[serial]))
                wins.append(serial)
            except AlreadyExists:
                pass

        serials = iter(f"s{i}" for i in range(8))
        lock = threading.Lock()

        def one() -> None:
            with lock:
                serial = next(serials)
            race(serial)

        in_threads(8, one)
        assert len(wins) == 1
        assert store.get_agent("a1").cert_serials == wins

    def test_speeds_are_kept_with_the_record_and_no_update_of_them_is_lost(self, store):
        store.put_agent(AgentRecord("a", speeds={"digits": 2.5}))
        store.heartbeat("a", 3.0)

        def bump(n: int) -> None:
            for _ in range(n):
                store.update_agent("a", lambda r: dataclasses.replace(
                    r, speeds={**r.speeds, "digits": r.speeds["digits"] + 1.0}))

        in_threads(4, lambda: bump(10))
        store.update_agent("a", lambda r: dataclasses.replace(r, speeds={**r.speeds, "reid": 0.5}))
        store.update_agent("a", lambda r: dataclasses.replace(r, labels={"site": "x"}))
        store.heartbeat("a", 4.0)

        got = store.get_agent("a")
        assert got.speeds == {"digits": 42.5, "reid": 0.5}
        assert [a.speeds for a in store.list_agents()] == [{"digits": 42.5, "reid": 0.5}]
        got.speeds["digits"] = 0.0
        assert store.get_agent("a").speeds["digits"] == 42.5  # a copy

    def test_records_are_copies(self, store):
        store.put_agent(AgentRecord("a", labels={"k": "v"}))
        got = store.get_agent("a")
        got.labels["k"] = "changed"
        assert store.get_agent("a").labels == {"k": "v"}


class TestRunStore:
    """RunStore: runs, and rounds with their state machine."""

    def test_runs(self, store):
        store.create_run(RunRecord("r1", {"task": "digits"}, created_unix=1))
        store.create_run(RunRecord("r0", {"task": "digits"}, created_unix=2))
        with pytest.raises(AlreadyExists):
            store.create_run(RunRecord("r1", {}))

        updated = store.update_run("r1", state="succeeded", latest_version="r1/000001")

        assert updated.state == "succeeded"
        assert store.get_run("r1").latest_version == "r1/000001"
        assert [r.run_id for r in store.list_runs()] == ["r1", "r0"]
        with pytest.raises(RunNotFound):
            store.get_run("nope")
        with pytest.raises(RunNotFound):
            store.update_run("nope", state="failed")

    def test_round_state_machine(self, store):
        store.create_round(RoundRecord("r", 1, "train", participants=["a"]))
        with pytest.raises(AlreadyExists):
            store.create_round(RoundRecord("r", 1, "train"))
        with pytest.raises(InvalidTransition, match="cannot go from open to committed"):
            store.transition_round("r", 1, "committed")

        store.transition_round("r", 1, "training")
        store.update_round("r", 1, reports=[UpdateReport("a", 4)])
        store.transition_round("r", 1, "aggregating")
        done = store.transition_round("r", 1, "committed", version="r/000001")

        assert done.state == "committed" and done.version == "r/000001"
        assert store.get_round("r", 1).reports == [UpdateReport("a", 4)]
        with pytest.raises(InvalidTransition):
            store.transition_round("r", 1, "failed")
        with pytest.raises(InvalidTransition):
            store.update_round("r", 1, state="open")
        with pytest.raises(RoundNotFound):
            store.transition_round("r", 2, "training")
        with pytest.raises(RoundNotFound):
            store.get_round("r", 2)

    def test_any_state_but_terminal_can_fail(self, store):
        for i, path in enumerate([[], ["training"], ["training", "aggregating"]]):
            store.create_round(RoundRecord("r", i, "train"))
            for s in path:
                store.transition_round("r", i, s)
            assert store.transition_round("r", i, "failed", reason="x").reason == "x"

    def test_any_state_but_terminal_can_be_cancelled_and_cancelled_is_final(self, store):
        for i, path in enumerate([[], ["training"], ["training", "aggregating"]]):
            store.create_round(RoundRecord("r", i, "train"))
            for s in path:
                store.transition_round("r", i, s)
            assert store.transition_round("r", i, "cancelled", reason="by token/t").state is RoundState.CANCELLED
            for to in ("committed", "failed", "training", "cancelled"):
                with pytest.raises(InvalidTransition, match="cannot go from cancelled"):
                    store.transition_round("r", i, to)
        store.create_round(RoundRecord("r", 9, "train"))
        store.transition_round("r", 9, "failed")
        with pytest.raises(InvalidTransition, match="cannot go from failed to cancelled"):
            store.transition_round("r", 9, "cancelled")

    def test_racing_transitions_have_one_winner(self, store):
        store.create_round(RoundRecord("r", 1, "train"))
        store.transition_round("r", 1, "training")
        wins, barrier = [], threading.Barrier(8)

        def race():
            barrier.wait()
            try:
                store.transition_round("r", 1, "aggregating")
                wins.append(1)
            except InvalidTransition:
                pass

        in_threads(8, race)
        assert len(wins) == 1

    def test_rounds_listed_in_order(self, store):
        for i in (3, 1, 2):
            store.create_round(RoundRecord("r", i, "train"))
        store.create_round(RoundRecord("other", 1, "train"))
        assert [r.round for r in store.list_rounds("r")] == [1, 2, 3]


class TestAggregationJournal:
    """AggregationJournal: each round's record, updates counted once, journals apart."""

    def test_aggregation_journal_counts_each_update_once(self, store):
        store.create_aggregation(journal())
        with pytest.raises(AlreadyExists):
            store.create_aggregation(journal())

        assert store.count_update("r", 1, "a", UpdateReport("a", 3)) is True
        assert store.count_update("r", 1, "a", UpdateReport("a", 99)) is False
        assert store.count_update("r", 1, "b", UpdateReport("b", 5, weight=2.5)) is True

        rec = store.get_aggregation("r", 1)
        assert rec.reports == {"a": UpdateReport("a", 3), "b": UpdateReport("b", 5, weight=2.5)}
        assert [(j.run_id, j.round) for j in store.list_aggregations()] == [("r", 1)]

    def test_aggregation_journal_states(self, store):
        store.create_aggregation(journal(1))
        store.create_aggregation(journal(2))
        store.set_aggregation_state("r", 1, "aggregating")
        with pytest.raises(RoundNotOpen):
            store.count_update("r", 1, "a", UpdateReport("a", 1))
        store.set_aggregation_state("r", 1, "committed", version="r/000001")
        store.set_aggregation_state("r", 2, "failed", reason="deadline")

        assert store.get_aggregation("r", 1).version == "r/000001"
        assert store.get_aggregation("r", 2).reason == "deadline"
        assert store.list_aggregations() == []
        with pytest.raises(InvalidTransition):
            store.set_aggregation_state("r", 1, "training")
        with pytest.raises(RoundNotFound):
            store.count_update("r", 9, "a", UpdateReport("a", 1))
        with pytest.raises(RoundNotFound):
            store.get_aggregation("r", 9)

    def test_a_cancelled_journal_is_finished_and_counts_nothing_more(self, store):
        store.create_aggregation(journal(1))
        store.create_aggregation(journal(2))
        store.set_aggregation_state("r", 2, "aggregating")

        store.set_aggregation_state("r", 1, "cancelled", reason="run cancelled")
        store.set_aggregation_state("r", 2, "cancelled", reason="run cancelled")

        assert store.get_aggregation("r", 1).state is RoundState.CANCELLED
        assert store.get_aggregation("r", 1).reason == "run cancelled"
        assert store.list_aggregations() == []
        with pytest.raises(RoundNotOpen, match="is cancelled"):
            store.count_update("r", 1, "a", UpdateReport("a", 1))
        with pytest.raises(InvalidTransition):
            store.set_aggregation_state("r", 2, "committed", version="r/000002")

    def test_aggregation_journals_are_separate(self, store):
        """A leaf's journal of a round never meets the root's journal of the same round."""
        store.create_aggregation(journal())
        plan = dataclasses.replace(journal().plan, participants=("a",), partial=True)
        leaf = AggregationRecord(plan, journal="leaf/a")
        store.create_aggregation(leaf)
        with pytest.raises(AlreadyExists):
            store.create_aggregation(leaf)

        assert store.count_update("r", 1, "a", UpdateReport("a", 1), journal="leaf/a") is True
        assert store.count_update("r", 1, "a", UpdateReport("a", 2)) is True
        store.set_aggregation_state("r", 1, "aggregating", journal="leaf/a")

        assert store.get_aggregation("r", 1).reports == {"a": UpdateReport("a", 2)}
        assert store.get_aggregation("r", 1).state == "training"
        got = store.get_aggregation("r", 1, journal="leaf/a")
        assert (got.state, got.plan.partial, got.reports) == ("aggregating", True, {"a": UpdateReport("a", 1)})
        assert [j.journal for j in store.list_aggregations()] == [""]
        assert [j.journal for j in store.list_aggregations("leaf/a")] == ["leaf/a"]
        assert store.list_aggregations("leaf/b") == []
        with pytest.raises(RoundNotFound):
            store.get_aggregation("r", 1, journal="leaf/b")
        store.set_aggregation_state("r", 1, "failed", journal="leaf/a", reason="x")
        assert store.list_aggregations("leaf/a") == []
        assert len(store.list_aggregations()) == 1

    def test_racing_counts_of_one_update_have_one_winner(self, store):
        store.create_aggregation(journal())
        wins, barrier = [], threading.Barrier(6)

        def race():
            barrier.wait()
            if store.count_update("r", 1, "a", UpdateReport("a", 1)):
                wins.append(1)

        in_threads(6, race)
        assert len(wins) == 1


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


class TestDocuments:
    """Documents: federations, API tokens, enrollment tokens."""

    def test_federations(self, store):
        rec = FederationRecord("nightly", {"task": "digits"}, description="d", created_unix=1.0, updated_unix=1.0)
        store.create_federation(rec)
        with pytest.raises(AlreadyExists):
            store.create_federation(rec)
        assert store.get_federation("nightly") == rec
        store.create_federation(FederationRecord("adhoc", {"task": "fedreid"}))
        assert [f.federation_id for f in store.list_federations()] == ["adhoc", "nightly"]
        updated = store.update_federation("nightly", schedule={"cron": "0 2 * * *"}, updated_unix=2.0)
        assert updated.schedule == {"cron": "0 2 * * *"} and updated.spec == {"task": "digits"}
        assert store.get_federation("nightly") == updated
        store.delete_federation("adhoc")
        for call in (lambda: store.get_federation("adhoc"), lambda: store.update_federation("adhoc", description="x"),
                     lambda: store.delete_federation("adhoc")):
            with pytest.raises(NotFound, match="federation 'adhoc' not found"):
                call()
        assert [f.federation_id for f in store.list_federations()] == ["nightly"]

    def test_tokens_are_found_by_hash(self, store):
        store.create_token(TokenRecord("tok1", "a" * 64, "admin", "bootstrap"))
        store.create_token(TokenRecord("tok2", "b" * 64, "viewer"))
        with pytest.raises(AlreadyExists):
            store.create_token(TokenRecord("tok1", "c" * 64, "viewer"))
        assert store.find_token("b" * 64).token_id == "tok2"
        assert store.find_token("c" * 64) is None
        store.delete_token("tok2")
        assert store.find_token("b" * 64) is None
        assert [t.token_id for t in store.list_tokens()] == ["tok1"]
        with pytest.raises(NotFound):
            store.delete_token("tok2")

    def test_enrollment_tokens_are_used_once(self, store):
        store.create_enrollment_token(EnrollmentTokenRecord("e1", "hash-1", 100.0, "site"))
        with pytest.raises(AlreadyExists):
            store.create_enrollment_token(EnrollmentTokenRecord("e1", "hash-2", 100.0))
        got = []
        in_threads(8, lambda: got.append(store.consume_enrollment_token("hash-1")))

        assert [g.token_id for g in got if g is not None] == ["e1"]  # exactly one caller got it
        assert store.list_enrollment_tokens() == [] and store.consume_enrollment_token("hash-1") is None


def audit_entry(i: int, action: str = "run.cancel", actor: str = "token/t1") -> AuditEntry:
    return AuditEntry(action, f"run/r{i}", actor, actor_name="ops", role="operator", time_unix=float(i),
                      detail={"reason": f"because {i}"})


def with_audit_keep(store: StateStore, keep: int) -> StateStore:
    """A store of the same backend and a tenant of its own, keeping ``keep`` audit entries."""
    if isinstance(store, RedisStateStore):
        return RedisStateStore(store.r, "audit-small", audit_keep=keep)
    return MemoryStateStore("audit-small", audit_keep=keep)


class TestAuditLog:
    """AuditLog: appended in order with increasing sequence numbers, paged, filtered, bounded."""

    def test_entries_are_appended_in_order_and_read_back_whole(self, store):
        seqs = [store.append_audit(audit_entry(i)) for i in range(3)]

        got = store.list_audit()

        assert seqs == [1, 2, 3]
        assert [e.seq for e in got] == [1, 2, 3]
        assert got[1] == dataclasses.replace(audit_entry(1), seq=2)

    def test_pages_follow_the_last_sequence_number(self, store):
        for i in range(7):
            store.append_audit(audit_entry(i))

        first = store.list_audit(limit=3)
        second = store.list_audit(after_seq=first[-1].seq, limit=3)
        last = store.list_audit(after_seq=second[-1].seq, limit=3)

        assert [e.seq for e in first + second + last] == list(range(1, 8))
        assert len(last) == 1 and store.list_audit(after_seq=7) == []

    def test_filters_skip_entries_without_shortening_pages(self, store):
        for i in range(1200):  # past the Redis backend's scan batch
            store.append_audit(audit_entry(i, "agent.delete" if i % 400 == 399 else "run.cancel",
                                           "token/t2" if i == 799 else "token/t1"))

        deletes = store.list_audit(action="agent.delete", limit=2)
        rest = store.list_audit(after_seq=deletes[-1].seq, action="agent.delete", limit=2)
        by_t2 = store.list_audit(actor="token/t2")
        both = store.list_audit(action="run.cancel", actor="token/t2")

        assert [e.seq for e in deletes] == [400, 800] and [e.seq for e in rest] == [1200]
        assert [(e.seq, e.action) for e in by_t2] == [(800, "agent.delete")]
        assert both == []

    def test_concurrent_appends_each_get_their_own_number(self, store):
        got: list[int] = []
        in_threads(8, lambda: got.extend(store.append_audit(audit_entry(i)) for i in range(5)))

        assert sorted(got) == list(range(1, 41))
        assert [e.seq for e in store.list_audit(limit=100)] == list(range(1, 41))

    def test_retention_drops_the_oldest_and_never_reuses_a_number(self, store):
        small = with_audit_keep(store, 3)
        for i in range(5):
            small.append_audit(audit_entry(i))

        assert [e.seq for e in small.list_audit()] == [3, 4, 5]
        assert small.append_audit(audit_entry(9)) == 6
        assert [e.target for e in small.list_audit()] == ["run/r3", "run/r4", "run/r9"]


class TestCoordination:
    """Coordination: idempotency marks and leases."""

    def test_mark_once(self, store):
        assert store.mark_once("s", "a") is True
        assert store.mark_once("s", "a") is False
        assert store.mark_once("other", "a") is True
        assert store.is_marked("s", "a") and not store.is_marked("s", "b")

    def test_leases(self, store):
        assert store.acquire_lease("cron", "one", ttl_s=10, now_unix=100)
        assert not store.acquire_lease("cron", "two", ttl_s=10, now_unix=105)
        assert store.acquire_lease("cron", "one", ttl_s=10, now_unix=105)
        assert store.acquire_lease("cron", "two", ttl_s=10, now_unix=116)
        store.release_lease("cron", "one")  # not the holder: no effect
        assert not store.acquire_lease("cron", "one", ttl_s=10, now_unix=117)
        store.release_lease("cron", "two")
        assert store.acquire_lease("cron", "one", ttl_s=10, now_unix=118)


# The Redis backend's own promises.


def test_redis_keys_are_scoped_by_tenant(redis_url):
    a, b = RedisStateStore(connect(redis_url), "a"), RedisStateStore(connect(redis_url), "b")
    a.put_agent(AgentRecord("x"))
    a.create_run(RunRecord("r", {}))
    a.mark_once("s", "k")

    assert b.list_agents() == [] and b.list_runs() == []
    assert not b.is_marked("s", "k")
    with pytest.raises(RunNotFound):
        b.get_run("r")
    assert all(k.startswith(b"fedstream:a:") for k in connect(redis_url).keys("*"))


def test_redis_unreachable_is_unavailable():
    store = RedisStateStore(connect(f"redis://127.0.0.1:{free_port()}/0", retry_s=0.5), "t1")
    with pytest.raises(Unavailable, match="state store unreachable"):
        store.get_run("r")
