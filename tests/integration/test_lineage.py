"""Lineage end to end on real servers: a federation's runs driven by a real scheduler through a real
aggregator (on a local directory, and on a real S3-compatible server) commit versions whose
lineage names their parents, participants, example counts, data fingerprints, stragglers, code
and who started the run; the admin API serves it (graph, path between versions, model card)
only to the tenant it belongs to, and the CLI prints it. Buffered asynchronous versions name
every base their updates came from, and the aggregator refuses provenance it cannot keep."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from fedstream.convert import buffer_to_proto
from fedstream.provenance import Provenance
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore, ModelStore
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream.v1 import aggregator_pb2_grpc
from fedstream.version import distribution_version
from fedstream_agent.agent import Agent
from fedstream_agent.settings import AgentSettings, AgentTlsSettings
from fedstream_aggregator.server import build_server as build_aggregator
from fedstream_aggregator.service import AggregatorService
from fedstream_scheduler.admin import AdminServices
from fedstream_scheduler.aggregator_client import AggregatorClient
from fedstream_scheduler.api import build_api
from fedstream_scheduler.api.server import ApiServer
from fedstream_scheduler.server import build_server
from fedstream_scheduler.service import SchedulerService
from fedstream_scheduler.settings import SchedulerSettings
from fedstream_tasks.base import SiteDataSettings
from fedstream_tasks.fingerprint import fingerprint_listing
from fedstream_testing.helpers import random_model, store_model
from fedstream_testing.sim_agent import SimAgent, add_constant
from fedstream_testing.support import LoopThread, plan, upload, wait_terminal, wait_until

SPEC = {"task": "digits", "rounds": 2, "min_agents": 3, "min_updates": 2, "target_updates": 2,
        "round_timeout_s": 20, "wait_for_agents_s": 30, "training": {"seed": 1}}


def fingerprint(agent: str) -> str:
    return (agent.encode().hex() * 64)[:64]


@dataclass
class Deployment:
    url: str
    tokens: dict[str, dict[str, str]]  # tenant -> role -> secret
    admins: dict[str, AdminServices]
    store: ModelStore
    agent_endpoint: str

    def get(self, path: str, role: str = "viewer", tenant: str = "t1", **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.tokens[tenant][role]}"},
                         timeout=30, **kw)

    def run(self, fid: str, **body) -> dict:
        r = httpx.post(f"{self.url}/federations/{fid}/runs", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {self.tokens['t1']['operator']}"})
        assert r.status_code == 201, r.text
        deadline = time.time() + 60
        while (run := self.get(f"/runs/{r.json()['run_id']}").json())["state"] == "running":
            assert time.time() < deadline, run
            time.sleep(0.2)
        assert run["state"] == "succeeded", run["reason"]
        return run


def make_store(kind: str, request, tmp_path: Path, tenant: str) -> ModelStore:
    if kind == "s3":
        settings = request.getfixturevalue("s3_settings")
        store = S3ModelStore(make_client(settings), settings, tmp_path / f"staging-{tenant}", tenant)
        store.ping()  # makes the test's bucket
        return store
    return LocalModelStore(tmp_path / "models", tenant=tenant)


@pytest.fixture(params=["local", "s3"])
def deployment(request, tmp_path) -> Iterator[Deployment]:
    store = make_store(request.param, request, tmp_path, "t1")
    aggregator = build_aggregator(AggregatorService(MemoryStateStore("t1"), store, tmp_path / "spool", chunk_bytes=4096),
                                  "127.0.0.1", 0, max_workers=16)
    loop = LoopThread()
    settings = SchedulerSettings(aggregator_endpoint=f"127.0.0.1:{aggregator.port}", heartbeat_interval_s=0.2,
                                 heartbeat_ttl_s=2.0)
    admins, tokens, grpc_servers = {}, {}, []

    async def build() -> ApiServer:
        for tenant in ("t1", "t2"):
            service = SchedulerService(MemoryStateStore(tenant), AggregatorClient(settings.aggregator_endpoint), settings)
            admin = AdminServices(service, store if tenant == "t1" else LocalModelStore(tmp_path / "models", tenant=tenant))
            tokens[tenant] = {role: admin.tokens.create(role, f"{role} token")[1] for role in ("viewer", "operator")}
            admins[tenant] = admin
            grpc_servers.append(await build_server(service, "127.0.0.1", 0))
        server = ApiServer(build_api(admins), "127.0.0.1", 0)
        await server.start()
        return server

    api = loop.run(build())
    yield Deployment(f"http://127.0.0.1:{api.port}/api/v1", tokens, admins, store,
                     f"127.0.0.1:{grpc_servers[0].port}")
    for admin in admins.values():
        for run in admin.state.list_runs():
            if run.state == "running":
                loop.run(admin.runs.cancel_run(run.run_id))
    for server in grpc_servers:
        loop.run(server.stop(0))
    loop.run(api.stop())
    loop.close()
    aggregator.stop(0)


@pytest.fixture
def lineage_runs(deployment: Deployment) -> tuple[Deployment, dict, dict]:
    """Two runs of a federation, the second warm-started from the first's model: three agents
    of which one (slow) is never needed, so it straggles in every training round."""
    deployment.admins["t1"].federations.create("fed", dict(SPEC), "", None)
    agents = [
        SimAgent(agent, deployment.agent_endpoint, examples=10 * (i + 1), update=add_constant(1),
                 work_s=30.0 if agent == "slow" else 0.0,
                 provenance=Provenance("0.9", "digits@0.4", fingerprint(agent))).start()
        for i, agent in enumerate(("a0", "a1", "slow"))
    ]
    try:
        wait_until(lambda: len(deployment.admins["t1"].agents.live_agents("digits")) == 3, what="three live agents")
        first = deployment.run("fed", run_id="first")
        second = deployment.run("fed", run_id="second")
    finally:
        for a in agents:
            a.stop()
    return deployment, first, second


def test_every_version_of_a_run_has_its_lineage(lineage_runs):
    d, first, second = lineage_runs
    assert first["latest_version"] == "first/000002" and second["spec"]["initial_version"] == "first/000002"

    init = d.get("/models/first/000000/lineage").json()
    train = d.get("/models/first/000002/lineage").json()
    warm = d.get("/models/second/000001/lineage").json()

    assert init["kind"] == "init" and init["parents"] == [] and len(init["participants"]) == 1
    assert train["kind"] == "train" and train["parents"] == ["first/000001"] and train["round"] == 2
    assert warm["parents"] == ["first/000002"]
    counted = {p["agent_id"]: p for p in train["participants"]}
    assert set(counted) == {"a0", "a1"} and train["stragglers"] == ["slow"]
    assert (counted["a0"]["examples"], counted["a1"]["examples"]) == (10, 20)
    assert counted["a1"] | {"metrics": {}} == {"agent_id": "a1", "examples": 20, "metrics": {}, "agent_version": "0.9",
                                             "task_version": "digits@0.4", "data_fingerprint": fingerprint("a1")}
    assert train["task"] == {"name": "digits", "version": "0.4"}
    assert train["federation_id"] == "fed" and train["strategy"]["name"] == "fedavg"
    assert train["started_by"].startswith("token/") and "operator token, operator" in train["started_by"]
    assert train["training"]["seed"] == 1
    assert set(train["code"]) == {"aggregator", "scheduler"} and "fedstream-scheduler" in train["code"]["scheduler"]
    assert train["evaluations"] == {}
    # The run says who started it too.
    assert d.get("/runs/first").json()["started_by"] == train["started_by"]
    # Evaluations recorded since are merged in.
    d.store.put_evaluation("first/000002", "eval-000001", {"examples": 40, "metrics": {"accuracy": 0.75}})
    assert d.get("/models/first/000002/lineage").json()["evaluations"]["eval-000001"]["metrics"] == {"accuracy": 0.75}


def test_graph_path_and_card_over_the_api(lineage_runs):
    d, _, _ = lineage_runs

    graph = d.get("/models/first/000001/lineage/graph", params={"depth": 5}).json()
    assert [n["version"] for n in graph["nodes"]] == ["first/000000", "first/000001", "first/000002", "second/000001",
                                                      "second/000002"]
    assert {(e["parent"], e["child"]) for e in graph["edges"]} == {
        ("first/000000", "first/000001"), ("first/000001", "first/000002"),
        ("first/000002", "second/000001"), ("second/000001", "second/000002")}
    near = d.get("/models/first/000002/lineage/graph", params={"depth": 1}).json()
    assert [n["version"] for n in near["nodes"]] == ["first/000001", "first/000002", "second/000001"]

    path = d.get("/lineage/between", params={"from": "first/000000", "to": "second/000002"}).json()
    assert [n["version"] for n in path["versions"]] == ["first/000000", "first/000001", "first/000002",
                                                        "second/000001", "second/000002"]
    assert path["training_rounds"] == 4 and path["versions"][2]["participants"] == 2

    backwards = d.get("/lineage/between", params={"from": "second/000001", "to": "first/000002"})
    assert backwards.status_code == 400 and "not an ancestor" in backwards.json()["detail"]

    markdown = d.get("/models/first/000002/card", params={"format": "markdown"})
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith(r"# Model card: first\/000002") and "Stragglers: slow" in markdown.text
    card = d.get("/models/first/000002/card").json()
    assert card["version"] == "first/000002" and card["examples"] == 30 and card["model"]["tensors"] > 0
    assert card["provenance"]["parents"] == ["first/000001"] and card["model"]["pinned"] is False

    # A version retention deleted took its lineage along: its children still name it.
    d.store.delete("first/000000")
    assert d.get("/models/first/000000/lineage").status_code == 404
    gone = d.get("/models/first/000001/lineage/graph", params={"depth": 1}).json()
    assert {n["version"]: n["missing"] for n in gone["nodes"]} == {"first/000000": True, "first/000001": False,
                                                                 "first/000002": False}


def test_the_api_shows_lineage_only_of_the_tenants_own_versions(lineage_runs):
    d, _, _ = lineage_runs
    for path in ("/models/first/000002/lineage", "/models/first/000002/lineage/graph",
                 "/models/first/000002/card", "/models/first/000009/lineage", "/models/absent/000001/card"):
        other = d.get(path, tenant="t2") if "first/000002" in path else d.get(path)
        assert other.status_code == 404 and other.json()["code"] == "model_not_found", (path, other.text)
    between = d.get("/lineage/between", tenant="t2", params={"from": "first/000000", "to": "first/000002"})
    assert between.status_code == 404
    for params in ({"from": "x", "to": "first/000002"}, {"to": "first/000002"}):
        assert d.get("/lineage/between", params=params).status_code == 400
    assert d.get("/models/first/000002/lineage/graph", params={"depth": 0}).status_code == 400
    assert d.get("/models/first/000002/lineage").status_code == 200  # a viewer may read it
    assert d.get("/models/first/000002/card", params={"format": "html"}).status_code == 400


def fedstream(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    # The `fedstream` command as a process (its module: the same entry point as the script).
    return subprocess.run([sys.executable, "-m", "fedstream_cli", *args, "--api", d.url.removesuffix("/api/v1"), "--token", d.tokens["t1"]["viewer"]],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("deployment", ["local"], indirect=True)
def test_the_cli_prints_lineage_and_cards(lineage_runs, tmp_path):
    d, _, _ = lineage_runs

    shown = fedstream(d, "models", "lineage", "first/000002")
    as_json = fedstream(d, "models", "lineage", "first/000002", "--json")
    graph = fedstream(d, "models", "lineage", "first/000002", "--graph", "--depth", "1", "--json")
    since = fedstream(d, "models", "lineage", "second/000001", "--since", "first/000000")
    card = fedstream(d, "models", "card", "first/000002", "-o", str(tmp_path / "card.md"))
    card_json = fedstream(d, "models", "card", "first/000002", "--json")
    missing = fedstream(d, "models", "lineage", "first/000042")

    for done in (shown, as_json, graph, since, card, card_json):
        assert done.returncode == 0, done.stdout + done.stderr
    assert "parents       first/000001" in shown.stdout and "slow" in shown.stdout
    assert fingerprint("a0")[:16] in shown.stdout
    assert json.loads(as_json.stdout)["stragglers"] == ["slow"]
    assert {n["version"] for n in json.loads(graph.stdout)["nodes"]} == {"first/000001", "first/000002", "second/000001"}
    assert "first/000000 -> second/000001: 4 versions, 3 training rounds" in since.stdout
    assert (tmp_path / "card.md").read_text().startswith(r"# Model card: first\/000002")
    assert json.loads(card_json.stdout)["examples"] == 30
    assert missing.returncode != 0 and "model_not_found" in missing.stderr + missing.stdout


@pytest.mark.parametrize("deployment", ["local"], indirect=True)
def test_a_real_agent_reports_its_versions_and_its_datas_fingerprint(deployment, tmp_path):
    d = deployment
    spec = {"task": "digits", "rounds": 1, "min_agents": 1, "round_timeout_s": 60, "wait_for_agents_s": 60,
            "training": {"seed": 1, "no_op": True}}
    d.admins["t1"].federations.create("real", spec, "", None)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "labels.csv").write_text("img,label\n")
    settings = AgentSettings(agent_id="site-real", scheduler_endpoint=d.agent_endpoint,
                             tls=AgentTlsSettings(insecure_plaintext=True), device="cpu", cpu_threads=1,
                             reconnect_max_s=0.5, check_at_start=False,
                             data=SiteDataSettings(path=tmp_path / "site", site_index=0, num_sites=3))
    agent = Agent(settings)
    worker = threading.Thread(target=agent.run, daemon=True)
    worker.start()
    try:
        d.run("real", run_id="real")
    finally:
        agent.shutdown()
        worker.join(10)

    for version in ("real/000000", "real/000001"):
        (said,) = d.get(f"/models/{version}/lineage").json()["participants"]
        assert said["agent_id"] == "site-real"
        assert said["agent_version"] == distribution_version("fedstream-agent")
        assert said["task_version"] == f"digits@{distribution_version('fedstream-tasks')}"
        # digits' data is bundled: its folder holds only a label file, whose name and size count.
        assert said["data_fingerprint"] == fingerprint_listing([("labels.csv", len("img,label\n"))])


# Buffered asynchronous versions, and refused provenance: the aggregator alone.

RUN = "run-async"
BUFFER = BufferSpec(2, 3, StalenessFunction.CONSTANT, a=0.5, b=0.0, max_staleness=2)


def open_buffer(control, round_: int, base: str) -> None:
    msg = plan(RUN, round_, ["a", "b", "c"], base=base, min_updates=1, timeout=60)
    msg.buffer.CopyFrom(buffer_to_proto(BUFFER))
    msg.lineage_context = json.dumps({"federation_id": "async-fed", "started_by": "schedule/async-fed"})
    control.OpenRound(msg, timeout=10)


def test_a_buffered_version_names_every_base_its_updates_came_from(aggregator, agg_channel, model_store):
    store_model(model_store, f"{RUN}/000000", random_model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    said = Provenance("1.0", "digits@1.0", "f" * 64)

    open_buffer(control, 1, f"{RUN}/000000")
    for agent in "ab":
        upload(agg_channel, agent, random_model(1), 10, run_id=RUN, round_=1, provenance=said)
    assert wait_terminal(control, RUN, 1).version == f"{RUN}/000001"
    open_buffer(control, 2, f"{RUN}/000001")
    upload(agg_channel, "c", random_model(2), 20, run_id=RUN, round_=1)  # assigned in buffer 1: trained from 000000
    upload(agg_channel, "a", random_model(3), 10, run_id=RUN, round_=2, provenance=said)
    assert wait_terminal(control, RUN, 2).version == f"{RUN}/000002"

    doc = model_store.lineage(f"{RUN}/000002")
    assert doc["parents"] == [f"{RUN}/000001", f"{RUN}/000000"]
    assert {p["agent_id"]: p["agent_version"] for p in doc["participants"]} == {"c": "", "a": "1.0"}
    assert doc["stragglers"] == [] and doc["asynchronous"]["buffer_size"] == 2
    assert (doc["federation_id"], doc["started_by"]) == ("async-fed", "schedule/async-fed")
    assert model_store.lineage(f"{RUN}/000001")["parents"] == [f"{RUN}/000000"]


@pytest.mark.parametrize(("field", "value"), [
    ("agent_version", "1" * 129), ("task_version", "digits@\n1"), ("data_fingerprint", "\u00e9" * 64)])
def test_provenance_the_aggregator_cannot_keep_is_refused_naming_the_field(aggregator, agg_channel, model_store,
                                                                          field, value):
    store_model(model_store, "r1/000000", random_model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(plan("r1", 1, ["a", "b"], base="r1/000000", timeout=60), timeout=10)
    good = {"agent_version": "1.0", "task_version": "digits@1.0", "data_fingerprint": "0" * 64}

    with pytest.raises(grpc.RpcError) as refused:
        upload(agg_channel, "a", random_model(1), run_id="r1", provenance=Provenance(**{**good, field: value}))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in refused.value.details()
    # Nothing counted: the same agent's sound update still counts.
    assert upload(agg_channel, "a", random_model(1), run_id="r1", provenance=Provenance(**good)).duplicate is False


def test_a_plan_with_a_malformed_context_is_refused(aggregator, agg_channel, model_store):
    store_model(model_store, "r2/000000", random_model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    msg = plan("r2", 1, ["a"], base="r2/000000")
    msg.lineage_context = "[not an object]"
    with pytest.raises(grpc.RpcError) as refused:
        control.OpenRound(msg, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lineage_context" in refused.value.details()
