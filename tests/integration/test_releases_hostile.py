"""Releases and site-requested runs against what a hostile operator, a hostile site or bad timing
does, over the real admin API and the real SiteService (the fixture of test_releases); each
test names what it guards against."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from test_releases import plane, problem, propose, request, rpc_error, set_requests

from fedstream.v1 import scheduler_pb2 as pb
from fedstream_scheduler.audit import Actor

__all__ = ["plane"]  # the fixture


def channels(plane) -> dict[str, str]:
    got: dict[str, str] = plane.call("GET", "/federations/fed/channels", "viewer").json()
    return got


def test_a_version_deleted_before_its_last_approval_is_not_released(plane):
    first = propose(plane, "run-a/000002", "staging")["release_id"]
    plane.call("POST", f"/releases/{first}/approve", "admin")
    rid = propose(plane, "run-a/000001", "staging")["release_id"]
    plane.store.delete("run-a/000001")  # as retention does, while the release waits for approval

    detail = problem(plane.call("POST", f"/releases/{rid}/approve", "admin"), 409, "failed_precondition")
    assert "run-a/000001" in detail and "reject" in detail
    rec = plane.admin.state.get_release(rid)
    assert (rec.state, rec.approvals) == ("proposed", [])
    assert plane.admin.state.get_release(first).state == "released"
    assert channels(plane)["staging"] == "run-a/000002"
    assert plane.call("POST", f"/releases/{rid}/reject", "admin", json={"reason": "gone"}).status_code == 200


def test_a_site_approval_of_a_deleted_version_changes_nothing(plane):
    rid = propose(plane, "run-a/000001", "staging")["release_id"]
    # A channel that a site's approval alone releases.
    rec = plane.admin.state.update_release(rid, lambda r: dataclasses.replace(r, needed={"admins": 0, "sites": 1}))
    plane.store.delete(rec.version)
    e = rpc_error(lambda: plane.site("site-a").ApproveRelease(pb.ApproveReleaseRequest(release_id=rid), timeout=10))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "run-a/000001" in e.details()
    assert plane.admin.state.get_release(rid).approvals == []


def test_a_late_publish_of_an_earlier_release_leaves_the_later_one_released(plane):
    earlier = propose(plane, "run-a/000001", "staging")["release_id"]
    later = propose(plane, "run-a/000002", "staging")["release_id"]
    plane.call("POST", f"/releases/{later}/approve", "admin")
    decided = plane.admin.state.get_release(later).decided_unix
    # Two approvals at once: the earlier release's completed first, but its publish runs last.
    rec = plane.admin.state.update_release(earlier, lambda r: dataclasses.replace(
        r, state="released", decided_unix=decided - 1))
    plane.admin.releases._publish(rec, Actor("token", "t", "t", "admin"))

    assert plane.admin.state.get_release(later).state == "released"
    assert plane.admin.state.get_release(earlier).state == "superseded"
    assert channels(plane)["staging"] == "run-a/000002"


def test_the_current_release_of_a_channel_cannot_be_unpinned(plane):
    first = propose(plane, "run-a/000001", "staging")["release_id"]
    plane.call("POST", f"/releases/{first}/approve", "admin")

    detail = problem(plane.call("POST", "/models/run-a/000001/unpin", "operator"), 409, "failed_precondition")
    assert "staging" in detail and first in detail
    assert plane.store.pinned("run-a") == ["run-a/000001"]
    assert not any(e.action == "model.unpin" for e in plane.admin.state.list_audit(limit=100))
    second = propose(plane, "run-a/000002", "staging")["release_id"]
    plane.call("POST", f"/releases/{second}/approve", "admin")  # run-a/000001 is superseded: it may go
    assert plane.call("POST", "/models/run-a/000001/unpin", "operator").json()["pinned"] is False
    assert plane.store.pinned("run-a") == ["run-a/000002"]


# What a terminal obeys: an escape that erases the line and writes another version, a line break
# that adds a line of its own, a right-to-left override.
TRICKS = ["ok\x1b[2K\rversion: run-a/000002", "ok\nstate: released", "ok\u202eedoc", "ok\x9b2K"]


@pytest.mark.parametrize("trick", TRICKS)
def test_notes_and_reasons_with_control_characters_are_refused_naming_the_field(plane, trick):
    detail = problem(plane.call("POST", "/federations/fed/releases", "operator",
                                json={"channel": "staging", "version": "run-a/000001", "note": trick}),
                     400, "invalid_argument")
    assert detail.startswith("note") and "control character" in detail
    assert plane.admin.state.list_releases() == []
    rid = propose(plane, "run-a/000001", "staging")["release_id"]
    detail = problem(plane.call("POST", f"/releases/{rid}/reject", "admin", json={"reason": trick}),
                     400, "invalid_argument")
    assert detail.startswith("reason") and "control character" in detail
    assert plane.admin.state.get_release(rid).state == "proposed"

    set_requests(plane, mode="approve")
    e = rpc_error(lambda: request(plane, "site-a", trick))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("reason: holds")
    assert plane.admin.state.list_run_requests() == []
    pending = request(plane, "site-a", "new images, über 10 000").request_id  # text in any script is fine
    detail = problem(plane.call("POST", f"/run-requests/{pending}/deny", "operator", json={"reason": trick}),
                     400, "invalid_argument")
    assert detail.startswith("reason") and plane.admin.state.get_run_request(pending).state == "pending"


@pytest.mark.parametrize("release_id", ["", "rel-", "rel-00000000000g", "x" * 100_000, "rel-000000000000\n"])
def test_a_site_approval_of_no_release_id_is_refused_naming_the_field(plane, release_id):
    e = rpc_error(lambda: plane.site("site-a").ApproveRelease(pb.ApproveReleaseRequest(release_id=release_id),
                                                              timeout=10))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("release_id")
    assert len(e.details()) < 200
