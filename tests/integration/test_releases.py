"""Releases, channels and site-requested runs over the real admin API (uvicorn on loopback) and
the real scheduler's SiteService under mutual TLS, with agents' enrolled identities and a real
aggregator serving the released versions: roles, approvals by two admins and by a site that
took part (not by one that did not), the metric threshold, superseding, pinning, a channel
tracked on disk, and each site-request policy with its rate limit."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from fedstream.grpcutil import channel
from fedstream.pki import CertificateAuthority, Identity, TlsIdentity
from fedstream.rounds import RoundKind, RoundState, UpdateReport
from fedstream.safetensors_io import read_header
from fedstream.state import MemoryStateStore, RoundRecord, RunRecord
from fedstream.store import LocalModelStore
from fedstream.v1 import scheduler_pb2 as pb
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc
from fedstream_agent.identity import enroll
from fedstream_agent.site import MODEL_FILE, RELEASE_FILE, install, installed
from fedstream_aggregator.server import AggregatorServer
from fedstream_aggregator.server import build_server as build_aggregator
from fedstream_aggregator.service import AggregatorService
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.enrollment import Enrollment
from fedstream_scheduler.server import SchedulerServer
from fedstream_scheduler.server import build_server as build_scheduler
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.support import LoopThread

HOUR = dt.timedelta(hours=1)
# Runs started by requests wait for agents that never come: running until cancelled.
SPEC = {"task": "digits", "rounds": 1, "min_agents": 50, "round_timeout_s": 20, "wait_for_agents_s": 300,
        "training": {"seed": 1}}
POLICY = {"channels": {
    "production": {"admin_approvals": 2, "site_approvals": 1, "require": {"metric": "accuracy", "min": 0.8}},
    "staging": {"admin_approvals": 1},
}}
SITES = {"site-a": ["digits"], "site-b": ["digits"], "site-c": ["digits"], "site-x": ["other"]}


@dataclass
class Plane:
    loop: LoopThread
    admin: AdminServices
    store: LocalModelStore
    scheduler: SchedulerServer
    aggregator: AggregatorServer
    api: ApiServer
    tokens: dict[str, str]
    identities: dict[str, Path]

    def call(self, method: str, path: str, who: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.request(method, f"http://127.0.0.1:{self.api.port}/api/v1{path}", headers=headers,
                             timeout=30, **kw)

    def site(self, agent: str) -> pb_grpc.SiteServiceStub:
        ident = TlsIdentity.load(self.identities[agent])
        return pb_grpc.SiteServiceStub(channel(f"127.0.0.1:{self.scheduler.port}", ident))

    def track_args(self, agent: str, channel_name: str = "production") -> argparse.Namespace:
        return argparse.Namespace(scheduler=f"127.0.0.1:{self.scheduler.port}", agent_id="",
                                  identity=str(self.identities[agent]), plaintext=False, federation="fed",
                                  channel=channel_name, aggregator="")


def add_run(admin: AdminServices, store: LocalModelStore, run_id: str, accuracy: list[float]) -> None:
    """A finished run of federation fed whose versions site-a and site-b trained, each evaluated."""
    admin.state.create_run(RunRecord(run_id, {}, state="succeeded", federation="fed", created_unix=1.0,
                                     latest_version=f"{run_id}/{len(accuracy):06d}"))
    for n, acc in enumerate(accuracy, start=1):
        version = f"{run_id}/{n:06d}"
        store_model(store, version, random_model(n))
        admin.state.create_round(RoundRecord(
            run_id, n, RoundKind.TRAIN, RoundState.COMMITTED, ["site-a", "site-b"], version=version,
            reports=[UpdateReport("site-a", 10), UpdateReport("site-b", 12)],
        ))
        store.put_evaluation(version, f"{run_id}-{n + 100:06d}", {"metrics": {"accuracy": acc}})


def build(loop: LoopThread, tmp: Path) -> Plane:
    ca = CertificateAuthority.create("t1")
    names = ("localhost", "127.0.0.1")
    state, store = MemoryStateStore("t1"), LocalModelStore(tmp / "models", "t1")
    agg_identity = ca.issue_identity(Identity("t1", "service", "aggregator"), HOUR, names)
    sched_identity = ca.issue_identity(Identity("t1", "service", "scheduler"), HOUR, names)
    aggregator = build_aggregator(AggregatorService(state, store, tmp / "spool", chunk_bytes=4096), "127.0.0.1", 0,
                                  max_workers=8, tls=agg_identity)
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=2.0)
    enrollment = Enrollment(state, ca, 3600.0)

    async def start() -> tuple[AdminServices, SchedulerServer, ApiServer]:
        service = SchedulerService(state, AggregatorClient(settings.aggregator_endpoint, sched_identity), settings)
        admin = AdminServices(service, store, enrollment=enrollment)
        server = await build_scheduler(service, "127.0.0.1", 0, tls=sched_identity, enrollment=enrollment,
                                       enroll_port=0, admin=admin)
        api = ApiServer(build_api({"t1": admin}), "127.0.0.1", 0)
        await api.start()
        return admin, server, api

    admin, server, api = loop.run(start())
    tokens = {role: admin.tokens.create(role, f"{role} token")[1] for role in ("viewer", "operator", "admin")}
    tokens["admin2"] = admin.tokens.create("admin", "second admin")[1]
    identities = {}
    for agent, tasks in SITES.items():
        _, secret = enrollment.create_token(agent, 60)
        ident = enroll(f"127.0.0.1:{server.enroll_port}", ca.cert_pem, secret, agent)
        ident.save(tmp / "identities" / agent)
        identities[agent] = tmp / "identities" / agent
        pb_grpc.AgentServiceStub(channel(f"127.0.0.1:{server.port}", ident)).Register(
            pb.RegisterRequest(agent=pb.AgentInfo(tasks=tasks)), timeout=10)
    admin.federations.create("fed", SPEC, "", None, POLICY, None)
    add_run(admin, store, "run-a", [0.5, 0.9])
    return Plane(loop, admin, store, server, aggregator, api, tokens, identities)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    loop = LoopThread()
    p = build(loop, tmp_path)
    yield p
    for run in p.admin.state.list_runs():
        if run.state == "running":
            loop.run(p.admin.runs.cancel_run(run.run_id))
    loop.run(p.api.stop())
    loop.run(p.scheduler.stop(0))
    p.aggregator.stop(0)
    loop.close()


def problem(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json" and r.json()["code"] == code, r.text
    detail: str = r.json()["detail"]
    return detail


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def propose(plane: Plane, version: str, channel_name: str = "production", who: str = "operator") -> dict:
    r = plane.call("POST", "/federations/fed/releases", who,
                   json={"channel": channel_name, "version": version, "note": "ready"})
    assert r.status_code == 201, r.text
    return r.json()


def actions(plane: Plane) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in plane.admin.state.list_audit(limit=500)]


# Releases.

def test_two_admins_and_a_participating_site_release_a_version(plane):
    rel = propose(plane, "run-a/000002")
    rid = rel["release_id"]
    assert rel["state"] == "proposed" and rel["needed"] == {
        "admins": 2, "sites": 1, "require": {"metric": "accuracy", "min": 0.8}}

    assert plane.call("POST", f"/releases/{rid}/approve", "admin").json()["state"] == "proposed"
    assert "already" in problem(plane.call("POST", f"/releases/{rid}/approve", "admin"), 409, "already_approved")
    assert plane.call("POST", f"/releases/{rid}/approve", "admin2").json()["state"] == "proposed"  # a site is missing
    denied = rpc_error(lambda: plane.site("site-c").ApproveRelease(pb.ApproveReleaseRequest(release_id=rid), timeout=10))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "no part in run-a/000002" in denied.details()
    info = plane.site("site-a").ApproveRelease(pb.ApproveReleaseRequest(release_id=rid), timeout=10)

    assert (info.state, info.admin_approvals, info.site_approvals) == ("released", 2, 1)
    shown = plane.call("GET", f"/releases/{rid}", "viewer").json()
    assert [(a["kind"], a["id"]) for a in shown["approvals"]][2] == ("site", "site-a")
    channels = plane.call("GET", "/federations/fed/channels", "viewer").json()
    assert channels == {"production": "run-a/000002", "staging": ""}
    assert plane.store.pinned("run-a") == ["run-a/000002"]
    assert ("release.approve", "agent/site-a") in actions(plane)
    assert [a for a, _ in actions(plane) if a.startswith("release.")] == [
        "release.propose", "release.approve", "release.approve", "release.approve", "release.publish"]
    again = plane.site("site-b").ApproveRelease
    assert rpc_error(lambda: again(pb.ApproveReleaseRequest(release_id=rid), timeout=10)).code() == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_the_proposers_own_approval_does_not_count(plane):
    rid = propose(plane, "run-a/000001", "staging", who="admin")["release_id"]
    assert "another admin" in problem(plane.call("POST", f"/releases/{rid}/approve", "admin"), 403, "permission_denied")
    assert plane.call("GET", f"/releases/{rid}", "viewer").json()["approvals"] == []
    assert plane.call("POST", f"/releases/{rid}/approve", "admin2").json()["state"] == "released"


def test_roles_viewers_read_operators_propose_admins_decide(plane):
    assert problem(plane.call("POST", "/federations/fed/releases", "viewer",
                              json={"channel": "staging", "version": "run-a/000001"}), 403, "permission_denied")
    rid = propose(plane, "run-a/000001", "staging")["release_id"]
    for who in ("viewer", "operator"):
        assert "admin" in problem(plane.call("POST", f"/releases/{rid}/approve", who), 403, "permission_denied")
        problem(plane.call("POST", f"/releases/{rid}/reject", who, json={"reason": "no"}), 403, "permission_denied")
    assert plane.call("GET", "/federations/fed/releases", "viewer").json()["items"][0]["release_id"] == rid
    problem(plane.call("GET", "/releases/rel-000000000000", "viewer"), 404, "release_not_found")


def test_a_version_below_the_channels_metric_is_refused_naming_it(plane):
    detail = problem(plane.call("POST", "/federations/fed/releases", "operator",
                                json={"channel": "production", "version": "run-a/000001"}), 409, "metric_below_threshold")
    assert "accuracy" in detail and "0.5" in detail and "0.8" in detail
    assert plane.admin.state.list_releases("fed") == []


@pytest.mark.parametrize(("body", "status", "code", "named"), [
    ({"channel": "canary", "version": "run-a/000002"}, 404, "channel_not_found", "canary"),
    ({"channel": "staging", "version": "run-a/000009"}, 404, "model_not_found", "run-a/000009"),
    ({"channel": "staging", "version": "run-z/000001"}, 404, "model_not_found", "run-z/000001"),
    ({"channel": "staging", "version": "not a version"}, 400, "invalid_argument", "version"),
    ({"channel": "staging", "version": "run-a/000001", "note": "x" * 1001}, 400, "invalid_argument", "note"),
    ({"channel": "staging", "version": "run-a/000001", "extra": 1}, 400, "invalid_argument", "extra"),
])
def test_bad_proposals_are_refused_and_change_nothing(plane, body, status, code, named):
    assert named in problem(plane.call("POST", "/federations/fed/releases", "operator", json=body), status, code)
    assert plane.admin.state.list_releases() == []


def test_a_new_release_supersedes_the_channels_last_and_rejected_ones_end(plane):
    first = propose(plane, "run-a/000001", "staging")["release_id"]
    plane.call("POST", f"/releases/{first}/approve", "admin")
    second = propose(plane, "run-a/000002", "staging")["release_id"]
    third = propose(plane, "run-a/000002", "production")["release_id"]
    problem(plane.call("POST", "/federations/fed/releases", "operator",
                       json={"channel": "staging", "version": "run-a/000002"}), 409, "already_exists")
    plane.call("POST", f"/releases/{second}/approve", "admin")
    rejected = plane.call("POST", f"/releases/{third}/reject", "admin", json={"reason": "not yet"}).json()

    states = {r["release_id"]: r["state"] for r in plane.call("GET", "/federations/fed/releases", "viewer").json()["items"]}
    assert states == {first: "superseded", second: "released", third: "rejected"} and rejected["reason"] == "not yet"
    assert problem(plane.call("POST", f"/releases/{third}/approve", "admin2"), 409, "release_decided")
    only = plane.call("GET", "/federations/fed/releases?state=superseded&channel=staging", "viewer").json()["items"]
    assert [r["release_id"] for r in only] == [first]
    assert sorted(plane.store.pinned("run-a")) == ["run-a/000001", "run-a/000002"]


def test_two_admins_approving_at_once_both_land(plane):
    rid = propose(plane, "run-a/000002")["release_id"]
    answers = []
    threads = [threading.Thread(target=lambda w=w: answers.append(plane.call("POST", f"/releases/{rid}/approve", w)))
               for w in ("admin", "admin2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [200, 200]
    assert len(plane.admin.state.get_release(rid).approvals) == 2


# Channels, for agents.

def release_now(plane: Plane, version: str) -> None:
    rid = propose(plane, version)["release_id"]
    plane.call("POST", f"/releases/{rid}/approve", "admin")
    plane.call("POST", f"/releases/{rid}/approve", "admin2")
    plane.site("site-b").ApproveRelease(pb.ApproveReleaseRequest(release_id=rid), timeout=10)


def test_agents_of_the_federation_get_its_channel_and_others_do_not(plane):
    ask = pb.GetChannelRequest(federation="fed", channel="production")
    assert rpc_error(lambda: plane.site("site-c").GetChannel(ask, timeout=10)).code() == grpc.StatusCode.NOT_FOUND
    release_now(plane, "run-a/000002")

    got = plane.site("site-c").GetChannel(ask, timeout=10)
    assert got.version == "run-a/000002" and got.sha256 == plane.store.info("run-a/000002").sha256
    assert got.aggregator_endpoint == f"127.0.0.1:{plane.aggregator.port}"
    outsider = rpc_error(lambda: plane.site("site-x").GetChannel(ask, timeout=10))
    assert outsider.code() == grpc.StatusCode.PERMISSION_DENIED and "'fed'" in outsider.details()
    unknown = rpc_error(lambda: plane.site("site-a").GetChannel(
        pb.GetChannelRequest(federation="fed", channel="canary"), timeout=10))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "canary" in unknown.details()
    claimed = rpc_error(lambda: plane.site("site-a").GetChannel(
        pb.GetChannelRequest(agent_id="site-b", federation="fed", channel="production"), timeout=10))
    assert claimed.code() == grpc.StatusCode.PERMISSION_DENIED


def data_sha256(path: Path) -> str:
    with path.open("rb") as f:
        read_header(f)
        return hashlib.sha256(f.read()).hexdigest()


def test_track_keeps_the_newest_release_on_disk_replacing_it_atomically(plane, tmp_path):
    site_dir = tmp_path / "serving"
    args = plane.track_args("site-c")
    add_run(plane.admin, plane.store, "run-b", [0.95])
    release_now(plane, "run-a/000002")

    assert install(args, site_dir)
    first = installed(site_dir)
    assert first["version"] == "run-a/000002" and data_sha256(site_dir / MODEL_FILE) == first["data_sha256"]
    assert hashlib.sha256((site_dir / MODEL_FILE).read_bytes()).hexdigest() == first["file_sha256"]
    old_inode = (site_dir / MODEL_FILE).stat().st_ino
    assert not install(args, site_dir)  # unchanged: nothing written
    assert (site_dir / MODEL_FILE).stat().st_ino == old_inode
    with (site_dir / MODEL_FILE).open("rb") as held:  # a server reading the old model keeps reading it whole
        release_now(plane, "run-b/000001")
        assert install(args, site_dir)
        assert hashlib.sha256(held.read()).hexdigest() != hashlib.sha256((site_dir / MODEL_FILE).read_bytes()).hexdigest()

    now = installed(site_dir)
    assert now["version"] == "run-b/000001" and now["data_sha256"] == plane.store.info("run-b/000001").sha256
    assert data_sha256(site_dir / MODEL_FILE) == now["data_sha256"] and (site_dir / MODEL_FILE).stat().st_ino != old_inode
    assert hashlib.sha256((site_dir / MODEL_FILE).read_bytes()).hexdigest() == now["file_sha256"]
    assert sorted(p.name for p in site_dir.iterdir()) == [MODEL_FILE, RELEASE_FILE]


# Site-requested runs.

def request(plane: Plane, agent: str, reason: str = "new images") -> pb.RunRequestInfo:
    reply: pb.RunRequestInfo = plane.site(agent).RequestRun(
        pb.RequestRunRequest(federation="fed", reason=reason), timeout=10)
    return reply


def set_requests(plane: Plane, **policy) -> None:
    r = plane.call("PATCH", "/federations/fed", "admin", json={"site_requests": policy})
    assert r.status_code == 200, r.text


def test_requests_are_refused_by_default_naming_the_policy(plane):
    e = rpc_error(lambda: request(plane, "site-a"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "site_requests.mode" in e.details()
    assert plane.admin.state.list_run_requests() == []


def test_auto_starts_a_run_at_once_as_the_agent(plane):
    set_requests(plane, mode="auto")
    info = request(plane, "site-a")
    assert info.state == "started" and info.run_id
    run = plane.admin.state.get_run(info.run_id)
    assert run.federation == "fed" and run.trigger == "site_request"
    assert ("run.start", "agent/site-a") in actions(plane) and ("run_request.create", "agent/site-a") in actions(plane)


def test_approve_waits_for_an_operator_who_starts_or_denies(plane):
    set_requests(plane, mode="approve")
    first, second = request(plane, "site-a"), request(plane, "site-b", "drift")
    assert first.state == second.state == "pending" and not first.run_id
    problem(plane.call("POST", f"/run-requests/{first.request_id}/approve", "viewer"), 403, "permission_denied")
    started = plane.call("POST", f"/run-requests/{first.request_id}/approve", "operator").json()
    denied = plane.call("POST", f"/run-requests/{second.request_id}/deny", "operator", json={"reason": "not now"}).json()

    assert started["state"] == "started" and plane.admin.state.get_run(started["run_id"]).trigger == "site_request"
    assert denied["state"] == "denied" and denied["deny_reason"] == "not now"
    problem(plane.call("POST", f"/run-requests/{first.request_id}/deny", "operator", json={"reason": "x"}),
            409, "request_decided")
    listed = plane.call("GET", "/federations/fed/run-requests", "viewer").json()["items"]
    assert [(r["agent_id"], r["state"]) for r in listed] == [("site-a", "started"), ("site-b", "denied")]
    assert {"run_request.approve", "run_request.deny"} <= {a for a, _ in actions(plane)}


def test_a_site_is_limited_per_day_and_told_when_it_may_ask_again(plane):
    set_requests(plane, mode="approve", max_per_site_per_day=2)
    request(plane, "site-a")
    request(plane, "site-a")
    e = rpc_error(lambda: request(plane, "site-a"))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_per_site_per_day" in e.details()
    assert "allowed at" in e.details()
    assert request(plane, "site-b").state == "pending"  # each site has its own
    assert len(plane.admin.state.list_run_requests("fed")) == 3


def test_outsiders_and_over_long_reasons_are_refused(plane):
    set_requests(plane, mode="auto")
    assert rpc_error(lambda: request(plane, "site-x")).code() == grpc.StatusCode.PERMISSION_DENIED
    long = rpc_error(lambda: request(plane, "site-a", "x" * 501))
    assert long.code() == grpc.StatusCode.INVALID_ARGUMENT and "500" in long.details()
    unknown = rpc_error(lambda: plane.site("site-a").RequestRun(pb.RequestRunRequest(federation="nope"), timeout=10))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert plane.admin.state.list_run_requests() == []


# Policies.

@pytest.mark.parametrize(("patch", "named"), [
    ({"releases": {"channels": {"production": {"admin_approvals": -1}}}}, "releases.channels.production.admin_approvals"),
    ({"releases": {"channels": {"Bad Name": {}}}}, "releases.channels.Bad Name"),
    ({"releases": {"channels": {"production": {"quorum": 2}}}}, "releases.channels.production.quorum"),
    ({"site_requests": {"mode": "always"}}, "site_requests.mode"),
    ({"site_requests": {"max_per_site_per_day": -1}}, "site_requests.max_per_site_per_day"),
])
def test_bad_policies_are_refused_naming_the_field_and_change_nothing(plane, patch, named):
    before = plane.call("GET", "/federations/fed", "viewer").json()
    assert named in problem(plane.call("PATCH", "/federations/fed", "admin", json=patch), 400, "invalid_argument")
    assert plane.call("GET", "/federations/fed", "viewer").json() == before


def test_a_policy_patch_merges_and_null_removes_a_channel(plane):
    r = plane.call("PATCH", "/federations/fed", "admin",
                   json={"releases": {"channels": {"staging": None, "production": {"admin_approvals": 3}}}})
    assert r.status_code == 200, r.text
    channels = r.json()["releases"]["channels"]
    assert list(channels) == ["production"] and channels["production"]["admin_approvals"] == 3
    assert channels["production"]["require"] == {"metric": "accuracy", "min": 0.8}
    assert r.json()["site_requests"] == {"mode": "refuse", "max_per_site_per_day": 2}


# The export archive, and the commands.

def test_a_version_exports_as_a_tar_whose_manifest_checks_every_member(plane):
    release_now(plane, "run-a/000002")
    r = plane.call("GET", "/models/run-a/000002/export", "viewer")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"

    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
        members = {n: tar.extractfile(n).read() for n in names}
    assert names == ["lineage.json", "card.md", "card.json", "model.safetensors", "MANIFEST.json"]
    manifest = json.loads(members["MANIFEST.json"])
    for name, want in manifest["members"].items():
        assert hashlib.sha256(members[name]).hexdigest() == want["sha256"] and len(members[name]) == want["bytes"]
    model = io.BytesIO(members["model.safetensors"])
    read_header(model)
    assert hashlib.sha256(model.read()).hexdigest() == manifest["data_sha256"] == plane.store.info("run-a/000002").sha256
    assert [x["channel"] for x in manifest["releases"]] == ["production"] and manifest["pinned"]
    assert json.loads(members["lineage.json"])["version"] == "run-a/000002"
    assert "run-a/000002" in members["card.md"].decode()
    problem(plane.call("GET", "/models/run-a/000009/export", "viewer"), 404, "model_not_found")


MODULES = {"fedstream": "fedstream_cli", "fedstream-agent": "fedstream_agent"}


def run_command(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command as a process (its package's __main__, as its entry point runs it)."""
    return subprocess.run([sys.executable, "-m", MODULES[argv[0]], *argv[1:]], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_the_commands_release_export_and_track(plane, tmp_path):
    api = ["--api", f"http://127.0.0.1:{plane.api.port}"]
    op, adm, adm2 = (["--token", plane.tokens[w]] for w in ("operator", "admin", "admin2"))
    proposed = run_command("fedstream", "releases", "propose", "fed", "--channel", "staging", "--version",
                           "run-a/000002", "--format", "json", *api, *op)
    assert proposed.returncode == 0, proposed.stderr
    rid = json.loads(proposed.stdout)["release_id"]
    approved = run_command("fedstream", "releases", "approve", rid, *api, *adm)
    assert approved.returncode == 0 and "released" in approved.stdout, approved.stderr
    again = run_command("fedstream", "releases", "approve", rid, *api, *adm2)
    assert again.returncode != 0 and "released" in again.stderr
    listed = run_command("fedstream", "channels", "list", "fed", *api, *adm)
    assert "staging" in listed.stdout and "run-a/000002" in listed.stdout, listed.stderr
    out = tmp_path / "export.tar"
    exported = run_command("fedstream", "models", "export", "run-a/000002", "-o", str(out), *api, *adm)
    assert exported.returncode == 0 and "4 members verified" in exported.stdout, exported.stderr
    with tarfile.open(out) as tar:
        assert tar.getnames()[-1] == "MANIFEST.json"

    agent = ["--scheduler", f"127.0.0.1:{plane.scheduler.port}", "--identity", str(plane.identities["site-b"])]
    tracked = run_command("fedstream-agent", "track", "--federation", "fed", "--channel", "staging", "--dir",
                          str(tmp_path / "serving"), "--once", *agent)
    assert tracked.returncode == 0, tracked.stderr
    assert installed(tmp_path / "serving")["version"] == "run-a/000002"
    refused = run_command("fedstream-agent", "request-run", "fed", "--reason", "new data", *agent)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
