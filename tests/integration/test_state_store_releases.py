"""Contract tests of the state store's releases, run requests and quotas (the documents role),
run against every backend: records read back whole, unknown ids not found, concurrent
approvals all land, and a quota hands out no more slots than its limit however many ask at once."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from fedstream.errors import AlreadyExists, FailedPrecondition, ReleaseNotFound, RunRequestNotFound
from fedstream.state import ReleaseRecord, RunRequestRecord, StateStore
from fedstream.state.documents import QuotaFull


@pytest.fixture
def store(state_store: StateStore) -> StateStore:
    return state_store


def in_threads(n: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def release(rid: str = "rel-000000000001", fed: str = "fed", proposed: float = 1.0) -> ReleaseRecord:
    return ReleaseRecord(rid, fed, "production", "run-a/000002", "proposed", "token/op", proposed, "good one",
                         [], {"admins": 2, "sites": 1, "require": {"metric": "accuracy", "min": 0.8}})


def test_releases_read_back_whole_and_list_by_federation(store):
    store.create_release(release("rel-b", proposed=2.0))
    store.create_release(release("rel-a", proposed=3.0))
    store.create_release(release("rel-c", fed="other"))
    with pytest.raises(AlreadyExists):
        store.create_release(release("rel-a"))
    assert store.get_release("rel-a") == release("rel-a", proposed=3.0)
    assert [r.release_id for r in store.list_releases("fed")] == ["rel-b", "rel-a"]
    assert len(store.list_releases()) == 3
    with pytest.raises(ReleaseNotFound, match="'rel-x'"):
        store.get_release("rel-x")
    with pytest.raises(ReleaseNotFound):
        store.update_release("rel-x", lambda r: r)


def test_a_refused_update_changes_nothing(store):
    store.create_release(release())

    def refuse(rec: ReleaseRecord) -> ReleaseRecord:
        raise FailedPrecondition("no")

    with pytest.raises(FailedPrecondition):
        store.update_release("rel-000000000001", refuse)
    assert store.get_release("rel-000000000001") == release()


def test_concurrent_approvals_all_land(store):
    store.create_release(release())

    def approve(i: int) -> None:
        store.update_release("rel-000000000001", lambda r: dataclasses.replace(
            r, approvals=[*r.approvals, {"kind": "admin", "id": f"token/{i}", "name": "", "unix": float(i)}]))

    in_threads(8, approve)
    assert sorted(a["id"] for a in store.get_release("rel-000000000001").approvals) == [f"token/{i}" for i in range(8)]


def test_run_requests_read_back_and_change(store):
    rec = RunRequestRecord("req-1", "fed", "site-a", "new data", "pending", 5.0)
    store.create_run_request(rec)
    store.create_run_request(RunRequestRecord("req-0", "other", "site-a", "", "pending", 1.0))
    with pytest.raises(AlreadyExists):
        store.create_run_request(rec)
    assert store.get_run_request("req-1") == rec
    assert [r.request_id for r in store.list_run_requests("fed")] == ["req-1"]
    started = store.update_run_request("req-1", lambda r: dataclasses.replace(r, state="started", run_id="req-1"))
    assert store.get_run_request("req-1") == started and started.run_id == "req-1"
    with pytest.raises(RunRequestNotFound, match="'req-x'"):
        store.get_run_request("req-x")


def test_a_quota_hands_out_its_limit_at_once_and_frees_with_the_window(store):
    taken, full = [], []

    def take(i: int) -> None:
        try:
            store.take_quota_slot("q:fed:site-a", 100.0 + i, 2, 50.0)
            taken.append(i)
        except QuotaFull as e:
            full.append(e.frees_unix)

    in_threads(6, take)
    assert len(taken) == 2 and len(full) == 4
    with pytest.raises(QuotaFull) as e:
        store.take_quota_slot("q:fed:site-a", 120.0, 2, 50.0)
    assert e.value.frees_unix == min(100.0 + i for i in taken) + 50.0
    store.take_quota_slot("q:fed:site-b", 120.0, 2, 50.0)  # another site's quota is its own
    store.take_quota_slot("q:fed:site-a", 200.0, 2, 50.0)  # the window passed
