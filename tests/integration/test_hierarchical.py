"""Hierarchical aggregation over real gRPC: a root and two leaf aggregators sharing one state
store (as they share Redis in a cluster) and one model store. The root deals participants to
the leaves, collects their sums and commits what a single aggregator commits."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import fedstream_aggregator.hierarchy as hierarchy_module
from fedstream.errors import RoundClosed
from fedstream.events import joined
from fedstream.grpcutil import channel
from fedstream.state import MemoryStateStore
from fedstream.tensors import FlatBuffer
from fedstream.transfer import download_model, upload_update
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_aggregator.leaves import Leaf
from fedstream_aggregator.server import build_server
from fedstream_aggregator.service import AggregatorService
from fedstream_aggregator.settings import AggregatorLimits
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import plan, wait_terminal

RUN = "tree"
BASE = f"{RUN}/000000"


class Layout3:
    """Two leaves and a root on loopback; ``single`` is a plain aggregator for comparison."""

    def __init__(self, tmp_path, model_store, limits=None):
        self.state = MemoryStateStore("t1")
        self.servers = []
        self.leaf_ports = []
        for i in range(2):
            svc = AggregatorService(self.state, model_store, tmp_path / f"leaf{i}", chunk_bytes=4096,
                                    journal=f"leaf/l{i}")
            server = build_server(svc, "127.0.0.1", 0, max_workers=16, limits=limits)
            self.servers.append(server)
            self.leaf_ports.append(server.port)
        self.leaves = [Leaf(f"127.0.0.1:{p}") for p in self.leaf_ports]
        root = AggregatorService(self.state, model_store, tmp_path / "root", chunk_bytes=4096, leaves=self.leaves)
        self.root = build_server(root, "127.0.0.1", 0, max_workers=16)
        self.servers.append(self.root)
        self.channels = {}

    def channel(self, endpoint):
        if endpoint not in self.channels:
            self.channels[endpoint] = channel(endpoint)
        return self.channels[endpoint]

    @property
    def root_endpoint(self):
        return f"127.0.0.1:{self.root.port}"

    def close(self):
        self.root.stop(0)
        for ch in self.channels.values():
            ch.close()
        for leaf in self.leaves:
            leaf.close()
        for server in self.servers[:2]:
            server.stop(0)


@pytest.fixture
def tree(tmp_path, model_store):
    t = Layout3(tmp_path, model_store)
    yield t
    t.close()


@pytest.fixture
def single(tmp_path, model_store):
    server = build_server(
        AggregatorService(MemoryStateStore("t2"), model_store, tmp_path / "single", chunk_bytes=4096),
        "127.0.0.1", 0, max_workers=16,
    )
    ch = channel(f"127.0.0.1:{server.port}")
    yield ch
    ch.close()
    server.stop(0)


def send(ch, agent, model, examples, metrics=None, run=RUN, round_=1):
    layout = layout_of(model)
    return upload_update(
        ch, run_id=run, round_=round_, agent_id=agent, layout=layout, buffers=buffers_of(layout, model),
        num_examples=examples, metrics=metrics or {}, chunk_bytes=1000, timeout=30,
    )


def read(store, version):
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for c in reader.iter_chunks():
            buf.write(c.offset, c.data)
    return buf.arrays()


def strategy_plan(run, participants, strategy, params=None, **kw):
    p = plan(run, 1, participants, base=f"{run}/000000", **kw)
    p.strategy.name = strategy
    p.strategy.params.update(params or {})
    return p


def test_leaves_holding_values_at_float32_largest_give_a_finite_mean(tree, model_store):
    """Each leaf's running state and the root's merge of them stay in float32's range, with
    values at its largest and example counts near 2^63."""
    big = float(np.finfo(np.float32).max)
    agents = ["a", "b", "c", "d"]
    values = {a: np.array([1.0, -1.0, 0.999 if i % 2 else 1.0], dtype=np.float64) * big for i, a in enumerate(agents)}
    examples = {a: 2**62 + i * 2**60 for i, a in enumerate(agents)}
    store_model(model_store, BASE, {"w": ("float32", np.zeros(3, dtype=np.float32))})
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    response = root.OpenRound(strategy_plan(RUN, agents, "fedavg"), timeout=10)

    for agent in agents:
        send(tree.channel(response.endpoints[agent]), agent, {"w": ("float32", values[agent].astype(np.float32))},
             examples[agent])
    event = wait_terminal(root, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got = read(model_store, event.version)["w"].astype(np.float64)
    total = float(sum(examples.values()))
    want = sum(values[a].astype(np.float32).astype(np.float64) * (examples[a] / total) for a in agents)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "strategy, params", [("fedavg", {}), ("uniform", {}), ("cosine", {}), ("fedyogi", {"eta": 0.3})]
)
def test_root_with_two_leaves_commits_what_a_single_aggregator_commits(tree, single, model_store, strategy, params):
    agents = ["a", "b", "c", "d", "e"]
    updates = {a: (random_model(i + 1, 16), 10 * (i + 1), {"cosine_distance": 0.1 * (i + 1)}) for i, a in enumerate(agents)}
    for run in (RUN, "flat"):
        store_model(model_store, f"{run}/000000", random_model(0, 16))

    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    response = root.OpenRound(strategy_plan(RUN, agents, strategy, params), timeout=10)
    # Dealt round-robin: leaf 0 takes a, c, e; leaf 1 takes b, d.
    leaf = [f"127.0.0.1:{p}" for p in tree.leaf_ports]
    assert dict(response.endpoints) == {"a": leaf[0], "b": leaf[1], "c": leaf[0], "d": leaf[1], "e": leaf[0]}
    for agent, (model, n, metrics) in updates.items():
        ch = tree.channel(response.endpoints[agent])
        downloaded = download_model(ch, RUN, BASE)  # the leaf serves the base model too
        assert downloaded.version == BASE
        send(ch, agent, model, n, metrics)
    event = wait_terminal(root, RUN, 1)

    flat = pb_grpc.AggregatorControlStub(single)
    assert dict(flat.OpenRound(strategy_plan("flat", agents, strategy, params), timeout=10).endpoints) == {}
    for agent, (model, n, metrics) in updates.items():
        send(single, agent, model, n, metrics, run="flat")
    flat_event = wait_terminal(flat, "flat", 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert flat_event.state == round_pb2.ROUND_STATE_COMMITTED, flat_event.reason
    assert sorted(r.agent_id for r in event.reports) == agents
    got, want = read(model_store, event.version), read(model_store, flat_event.version)
    for name, values in want.items():
        if values.dtype.kind == "f":
            np.testing.assert_allclose(got[name].astype(np.float64), values.astype(np.float64),
                                       rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)
    # Each leaf's share is finished once the root committed: its journal is closed.
    give_up = time.time() + 10
    while any(tree.state.list_aggregations(f"leaf/l{i}") for i in range(2)) and time.time() < give_up:
        time.sleep(0.05)
    for i in range(2):
        assert tree.state.list_aggregations(f"leaf/l{i}") == []
        assert tree.state.get_aggregation(RUN, 1, f"leaf/l{i}").state == "committed"
    assert tree.state.get_aggregation(RUN, 1).version == event.version


def test_deadline_on_the_root_commits_what_the_leaves_hold(tree, model_store):
    store_model(model_store, BASE, random_model(0, 4))
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    response = root.OpenRound(plan(RUN, 1, ["a", "b", "c", "d"], base=BASE, min_updates=2, timeout=3), timeout=10)
    models = {a: random_model(i + 1, 4) for i, a in enumerate("abc")}
    for agent, model in models.items():
        send(tree.channel(response.endpoints[agent]), agent, model, 10)
    event = wait_terminal(root, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert sorted(r.agent_id for r in event.reports) == ["a", "b", "c"]
    assert list(event.stragglers) == ["d"]
    got = read(model_store, event.version)
    layout = layout_of(models["a"])
    for t in layout.tensors:
        if t.dtype == "float32":
            ref = sum(m[t.name][1].astype(np.float64) for m in models.values()) / 3
            np.testing.assert_allclose(got[t.name], ref, rtol=1e-5, atol=1e-6)


def test_wrong_destinations_are_refused(tree, model_store):
    store_model(model_store, BASE, random_model(0, 4))
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    response = root.OpenRound(plan(RUN, 1, ["a", "b"], base=BASE), timeout=10)
    model = random_model(1, 4)

    with pytest.raises(grpc.RpcError) as err:
        send(tree.channel(tree.root_endpoint), "a", model, 10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert response.endpoints["a"] in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        send(tree.channel(response.endpoints["b"]), "a", model, 10)  # b's leaf, not a's
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert root.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=1), timeout=5).next().reports == []


def test_robust_and_init_rounds_stay_on_the_root(tree, model_store):
    store_model(model_store, BASE, random_model(0, 4))
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    assert dict(root.OpenRound(strategy_plan(RUN, ["a", "b", "c"], "median"), timeout=10).endpoints) == {}
    assert dict(root.OpenRound(plan("init", 0, ["a"], kind="init"), timeout=10).endpoints) == {}


def test_leaf_round_control_errors(tree, model_store):
    store_model(model_store, BASE, random_model(0, 4))
    leaf = pb_grpc.AggregatorControlStub(tree.channel(f"127.0.0.1:{tree.leaf_ports[0]}"))
    robust = strategy_plan(RUN, ["a"], "median")
    robust.partial = True
    with pytest.raises(grpc.RpcError) as err:
        leaf.OpenRound(robust, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "linear" in err.value.details()

    leaf.OpenRound(plan(RUN, 1, ["a"], base=BASE), timeout=10)  # an ordinary round
    with pytest.raises(grpc.RpcError) as err:
        next(leaf.CollectPartial(pb.CollectPartialRequest(run_id=RUN, round=1), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        next(leaf.CollectPartial(pb.CollectPartialRequest(run_id=RUN, round=7), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    share = plan(RUN, 2, ["a", "b"], base=BASE, min_updates=1)
    share.partial = True
    leaf.OpenRound(share, timeout=10)
    send(tree.channel(f"127.0.0.1:{tree.leaf_ports[0]}"), "a", random_model(1, 4), 10, round_=2)
    first = list(leaf.CollectPartial(pb.CollectPartialRequest(run_id=RUN, round=2), timeout=10))
    again = list(leaf.CollectPartial(pb.CollectPartialRequest(run_id=RUN, round=2), timeout=10))
    assert first == again and first[0].header.total_weight == 10
    assert [r.agent_id for r in first[0].header.reports] == ["a"]
    with pytest.raises(grpc.RpcError) as err:  # collected: closed to uploads
        send(tree.channel(f"127.0.0.1:{tree.leaf_ports[0]}"), "b", random_model(2, 4), 10, round_=2)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    leaf.FinishPartial(pb.FinishPartialRequest(run_id=RUN, round=2, version=f"{RUN}/000002"), timeout=10)
    leaf.FinishPartial(pb.FinishPartialRequest(run_id=RUN, round=2, version=f"{RUN}/000002"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        next(leaf.CollectPartial(pb.CollectPartialRequest(run_id=RUN, round=2), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert tree.state.get_aggregation(RUN, 2, "leaf/l0").state == "committed"


def test_a_leaf_that_is_gone_at_commit_is_left_out(tree, model_store, monkeypatch):
    monkeypatch.setattr(hierarchy_module, "LEAF_RETRY_S", 1.0)
    store_model(model_store, BASE, random_model(0, 4))
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    # Leaf 0 takes a and c, leaf 1 takes b and d; d never reports.
    response = root.OpenRound(plan(RUN, 1, ["a", "b", "c", "d"], base=BASE, min_updates=2, timeout=3), timeout=10)
    for i, agent in enumerate("abc"):
        send(tree.channel(response.endpoints[agent]), agent, random_model(i + 1, 4), 10)
    tree.servers[1].stop(0)  # leaf 1 goes away holding b's update
    event = wait_terminal(root, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert sorted(r.agent_id for r in event.reports) == ["a", "c"]
    assert sorted(event.stragglers) == ["b", "d"]


def test_reports_of_a_leaf_past_4_mib_reach_the_root_paged(tmp_path, model_store):
    tree = Layout3(tmp_path, model_store, AggregatorLimits(max_metrics_per_report=64, max_metric_name_bytes=1 << 20))
    try:
        store_model(model_store, BASE, random_model(0))
        root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
        agents = [f"a{i}" for i in range(10)]  # one leaf or the other takes five at least: 5 MiB of reports
        response = root.OpenRound(plan(RUN, 1, agents, base=BASE, timeout=60), timeout=10)
        metrics = {f"m{i:03d}".ljust(16_000, "x"): float(i) for i in range(64)}  # just under 1 MiB of names
        for i, agent in enumerate(agents):
            send(tree.channel(response.endpoints[agent]), agent, random_model(i + 1), 10, metrics)
        *_, snapshot = joined(root.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=1), timeout=60))
    finally:
        tree.close()

    assert snapshot.state.value == "committed", snapshot.reason
    assert sorted(r.agent_id for r in snapshot.reports) == sorted(agents)
    assert all(r.metrics == metrics for r in snapshot.reports)


def test_a_target_on_the_root_closes_the_round_and_its_leaves_refuse_later_uploads_as_late(tree, model_store):
    store_model(model_store, BASE, random_model(0, 4))
    root = pb_grpc.AggregatorControlStub(tree.channel(tree.root_endpoint))
    response = root.OpenRound(plan(RUN, 1, ["a", "b", "c", "d"], base=BASE, min_updates=2, target_updates=2,
                                   timeout=600), timeout=10)
    models = {a: random_model(i + 1, 4) for i, a in enumerate("abc")}

    for agent in "ab":  # one on each leaf
        send(tree.channel(response.endpoints[agent]), agent, models[agent], 10)
    event = wait_terminal(root, RUN, 1)  # long before the ten-minute deadline
    with pytest.raises(grpc.RpcError) as late:
        send(tree.channel(response.endpoints["c"]), "c", models["c"], 10)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert sorted(r.agent_id for r in event.reports) == ["a", "b"]
    assert sorted(event.stragglers) == ["c", "d"]
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert RoundClosed.is_closure(late.value.details())  # the leaf's share closed: its own count in the message
    got = read(model_store, event.version)
    for t in layout_of(models["a"]).tensors:
        if t.dtype == "float32":
            ref = sum(models[a][t.name][1].astype(np.float64) for a in "ab") / 2
            np.testing.assert_allclose(got[t.name], ref, rtol=1e-5, atol=1e-6)
