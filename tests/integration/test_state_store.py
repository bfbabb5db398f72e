"""Contract tests of the state store, one suite per role, each run against every backend."""

from __future__ import annotations

import dataclasses
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
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    EnrollmentTokenRecord,
    FederationRecord,
    MemoryStateStore,
    RoundRecord,
    RunRecord,
    StateStore,
    TokenRecord,
)
from fedstream.state.redis import RedisStateStore, connect
from fedstream_testing.servers import free_port

BACKENDS = ["memory", "redis"]


@pytest.fixture(params=BACKENDS)
def store(request) -> StateStore:
    if request.param == "redis":
        return RedisStateStore(connect(request.getfixturevalue("redis_url")), "t1")
    return MemoryStateStore("t1")


def in_threads(n: int, target: Callable[[], object]) -> None:
    """Runs ``target`` in ``n`` threads at once and waits for them all."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def journal(round_: int = 1) -> AggregationRecord:
    return AggregationRecord("r", round_, "train", "r/000000", ["a", "b"], 2, 123.0)


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
        store.update_round("r", 1, reports=[{"agent_id": "a"}])
        store.transition_round("r", 1, "aggregating")
        done = store.transition_round("r", 1, "committed", version="r/000001")

        assert done.state == "committed" and done.version == "r/000001"
        assert store.get_round("r", 1).reports == [{"agent_id": "a"}]
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

        assert store.count_update("r", 1, "a", {"num_examples": 3}) is True
        assert store.count_update("r", 1, "a", {"num_examples": 99}) is False
        assert store.count_update("r", 1, "b", {"num_examples": 5}) is True

        rec = store.get_aggregation("r", 1)
        assert rec.reports == {"a": {"num_examples": 3}, "b": {"num_examples": 5}}
        assert [(j.run_id, j.round) for j in store.list_aggregations()] == [("r", 1)]

    def test_aggregation_journal_states(self, store):
        store.create_aggregation(journal(1))
        store.create_aggregation(journal(2))
        store.set_aggregation_state("r", 1, "aggregating")
        with pytest.raises(RoundNotOpen):
            store.count_update("r", 1, "a", {})
        store.set_aggregation_state("r", 1, "committed", version="r/000001")
        store.set_aggregation_state("r", 2, "failed", reason="deadline")

        assert store.get_aggregation("r", 1).version == "r/000001"
        assert store.get_aggregation("r", 2).reason == "deadline"
        assert store.list_aggregations() == []
        with pytest.raises(InvalidTransition):
            store.set_aggregation_state("r", 1, "training")
        with pytest.raises(RoundNotFound):
            store.count_update("r", 9, "a", {})
        with pytest.raises(RoundNotFound):
            store.get_aggregation("r", 9)

    def test_aggregation_journals_are_separate(self, store):
        """A leaf's journal of a round never meets the root's journal of the same round."""
        store.create_aggregation(journal())
        leaf = dataclasses.replace(journal(), journal="leaf/a", participants=["a"], partial=True)
        store.create_aggregation(leaf)
        with pytest.raises(AlreadyExists):
            store.create_aggregation(leaf)

        assert store.count_update("r", 1, "a", {"num_examples": 1}, journal="leaf/a") is True
        assert store.count_update("r", 1, "a", {"num_examples": 2}) is True
        store.set_aggregation_state("r", 1, "aggregating", journal="leaf/a")

        assert store.get_aggregation("r", 1).reports == {"a": {"num_examples": 2}}
        assert store.get_aggregation("r", 1).state == "training"
        got = store.get_aggregation("r", 1, journal="leaf/a")
        assert (got.state, got.partial, got.reports) == ("aggregating", True, {"a": {"num_examples": 1}})
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
            if store.count_update("r", 1, "a", {"n": 1}):
                wins.append(1)

        in_threads(6, race)
        assert len(wins) == 1


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
