"""Contract tests of the state store, one suite per role, each run against every backend: agents,
runs and the aggregation journal here; stored forms of older releases in test_state_store_forms.py;
documents, the audit log and coordination in test_state_store_documents.py; releases and run
requests in test_state_store_releases.py."""

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
from fedstream.rounds import RoundKind, RoundPlan, RoundState, UpdateReport
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    RoundRecord,
    RunRecord,
    StateStore,
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
