"""Contract tests of the state store's documents, audit log and coordination roles, on every backend."""

from __future__ import annotations

import dataclasses

import pytest
from test_state_store import in_threads, store

from fedstream.errors import (
    AlreadyExists,
    NotFound,
)
from fedstream.state import (
    AuditEntry,
    EnrollmentTokenRecord,
    FederationRecord,
    MemoryStateStore,
    StateStore,
    TokenRecord,
)
from fedstream.state.redis import RedisStateStore

__all__ = ["store"]  # the fixture


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
