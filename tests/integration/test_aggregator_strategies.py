"""Strategies on the streaming aggregator, each checked against a direct computation; the
server optimizer's moments persist with the model, so a new aggregator continues them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedstream.rounds import RoundPlan
from fedstream.state import MemoryStateStore
from fedstream.strategies.server_opt import ServerOptParams, adaptive_step
from fedstream.tensors import FlatBuffer, iter_chunks
from fedstream.transfer import upload_update
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import plan, wait_terminal

RUN = "strat"


def read(store, version):
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for c in reader.iter_chunks():
            buf.write(c.offset, c.data)
    return buf.arrays()


def run_round(agg, round_, base, strategy, params, updates):
    """updates: agent -> (model, num_examples, metrics)."""
    agg.open_round(RoundPlan(RUN, round_, "train", base, tuple(updates), len(updates), time.time() + 60,
                             strategy, json.dumps(params, sort_keys=True)))
    for agent, (model, n, metrics) in updates.items():
        layout = layout_of(model)
        chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 4096)]
        agg.receive_update(UpdateHeader(RUN, round_, agent, layout, n, metrics), iter(chunks))
    give_up = time.time() + 30
    while agg.snapshot(RUN, round_).state not in ("committed", "failed") and time.time() < give_up:
        time.sleep(0.02)
    snap = agg.snapshot(RUN, round_)
    assert snap.state == "committed", snap.reason
    return snap.version


def floats(model):
    return {k: a.astype(np.float64) for k, (d, a) in model.items() if d == "float32"}


def fresh(model_store, tmp_path, name):
    return AggregatorService(MemoryStateStore(), model_store, tmp_path / name, chunk_bytes=4096)


@pytest.mark.parametrize(
    "strategy, weights",
    [
        ("fedavg", lambda n, m: n),
        ("uniform", lambda n, m: 1.0),
        ("fedprox", lambda n, m: n),
        ("cosine", lambda n, m: m["cosine_distance"]),
    ],
)
def test_linear_strategies_give_the_weighted_mean(strategy, weights, model_store, tmp_path):
    base = random_model(0, 4)
    store_model(model_store, f"{RUN}/000000", base)
    updates = {a: (random_model(i + 1, 4), 10 * (i + 1), {"cosine_distance": 0.1 * (3 - i)}) for i, a in enumerate("abc")}

    version = run_round(fresh(model_store, tmp_path, "s"), 1, f"{RUN}/000000", strategy, {}, updates)

    got = read(model_store, version)
    w = {a: weights(n, m) for a, (_, n, m) in updates.items()}
    for name in floats(base):
        ref = sum(floats(u)[name] * w[a] for a, (u, _, _) in updates.items()) / sum(w.values())
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("strategy, kind", [("fedadam", "adam"), ("fedyogi", "yogi"), ("fedadagrad", "adagrad")])
def test_server_optimizers_keep_their_moments_across_aggregators(strategy, kind, model_store, tmp_path):
    params = {"eta": 0.5, "tau": 0.01}
    p = ServerOptParams(**params)
    base = random_model(0, 4)
    store_model(model_store, f"{RUN}/000000", base)
    rounds = [
        {a: (random_model(10 * r + i, 4), 5 + i, {}) for i, a in enumerate("ab")} for r in range(1, 3)
    ]

    v1 = run_round(fresh(model_store, tmp_path, "one"), 1, f"{RUN}/000000", strategy, params, rounds[0])
    # A different aggregator process for round 2: the moments come from the store.
    v2 = run_round(fresh(model_store, tmp_path, "two"), 2, v1, strategy, params, rounds[1])

    x = floats(base)
    m = {k: np.zeros_like(a) for k, a in x.items()}
    v = {k: np.full_like(a, p.tau**2) for k, a in x.items()}
    for upd in rounds:
        total = sum(n for _, n, _ in upd.values())
        for k in x:
            mean = sum(floats(u)[k] * n for u, n, _ in upd.values()) / total
            x[k], m[k], v[k] = adaptive_step(kind, x[k], mean - x[k], m[k], v[k], p)
    got = read(model_store, v2)
    for k in x:
        np.testing.assert_allclose(got[k], x[k], rtol=1e-4, atol=1e-5, err_msg=k)
    with model_store.open_state(v2) as state:
        assert {"conv.weight/m", "conv.weight/v", "half.weight/m"} <= set(state.layout.names)
    # Integer tensors are averaged plainly.
    ints = read(model_store, v2)["bn.num_batches_tracked"]
    assert ints.dtype == np.int64


def test_cosine_weights_refuse_an_update_without_its_distance(model_store, tmp_path):
    from fedstream.errors import InvalidArgument

    store_model(model_store, f"{RUN}/000000", random_model(0, 4))
    agg = fresh(model_store, tmp_path, "c")
    agg.open_round(RoundPlan(RUN, 1, "train", f"{RUN}/000000", ("a",), 1, time.time() + 60, "cosine", "{}"))
    model = random_model(1, 4)
    layout = layout_of(model)
    chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 4096)]
    with pytest.raises(InvalidArgument, match="cosine_distance"):
        agg.receive_update(UpdateHeader(RUN, 1, "a", layout, 5, {}), iter(chunks))
    assert agg.snapshot(RUN, 1).reports == []


def test_unknown_strategy_in_a_plan_is_refused(model_store, tmp_path):
    from fedstream.errors import InvalidArgument

    store_model(model_store, f"{RUN}/000000", random_model(0, 4))
    with pytest.raises(InvalidArgument, match="unknown strategy 'nope'"):
        fresh(model_store, tmp_path, "x").open_round(
            RoundPlan(RUN, 1, "train", f"{RUN}/000000", ("a",), 1, time.time() + 60, "nope", "{}"))


@pytest.mark.parametrize(
    "strategy, params, reference",
    [
        ("median", {}, lambda x: np.median(x, axis=0)),
        ("trimmed-mean", {"beta": 0.2}, lambda x: np.sort(x, axis=0)[1:-1].mean(axis=0)),
        ("multi-krum", {"f": 1}, lambda x: x[:4].mean(axis=0)),  # the outlier (last) is left out
    ],
)
def test_robust_strategies_combine_kept_updates_piece_by_piece(strategy, params, reference, model_store, tmp_path, monkeypatch):
    from fedstream_aggregator import finishers

    monkeypatch.setattr(finishers, "COMBINE_PIECE_BYTES", 64)  # many pieces per tensor
    base = random_model(0, 4)
    store_model(model_store, f"{RUN}/000000", base)
    rng = np.random.default_rng(3)
    updates = {}
    for agent in "abcde":
        model = {k: (d, a.copy()) for k, (d, a) in base.items()}
        for d, a in model.values():
            if d == "float32" and a.size:
                noise = rng.standard_normal(a.shape).astype(np.float32) * 0.01
                a += noise * (1000 if agent == "e" else 1)  # e is poisoned
        updates[agent] = (model, 10, {})

    version = run_round(fresh(model_store, tmp_path, "r"), 1, f"{RUN}/000000", strategy, params, updates)

    got = read(model_store, version)
    for name in floats(base):
        stacked = np.stack([floats(m)[name].reshape(-1) for m, _, _ in updates.values()])
        np.testing.assert_allclose(got[name].reshape(-1), reference(stacked), rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(Exception, match="not found"):
        model_store.open_update(RUN, 1, "a")  # kept updates are removed after the commit


@pytest.mark.parametrize("mode", ["float16", "bfloat16", "int8"])
def test_compressed_updates_fold_to_the_mean_of_what_was_sent(mode, model_store, tmp_path):
    from fedstream.aggregation import bf16_to_f32, f32_to_bf16
    from fedstream.compression import SCALE_SUFFIX, dequantize_int8, quantize_int8

    base = {k: v for k, v in random_model(0, 4).items() if v[0] in ("float32", "int64")}
    store_model(model_store, f"{RUN}/000000", base)
    agg = fresh(model_store, tmp_path, "z")
    agg.open_round(RoundPlan(RUN, 1, "train", f"{RUN}/000000", ("a", "b"), 2, time.time() + 60,
                             "fedavg", "{}", mode))
    sent = {}
    for i, agent in enumerate("ab"):
        local = random_model(i + 1, 4)
        wire, values = {}, {}
        for name, (dtype, arr) in base.items():
            new = local[name][1]
            if dtype != "float32":
                wire[name] = (dtype, new)
                values[name] = new.astype(np.float64)
            elif mode == "int8":
                q, scale = quantize_int8(new - arr)
                wire[name] = ("int8", q)
                wire[name + SCALE_SUFFIX] = ("float32", np.array(scale, dtype=np.float32))
                values[name] = arr + dequantize_int8(q, scale)
            elif mode == "float16":
                wire[name] = ("float16", new.astype(np.float16))
                values[name] = new.astype(np.float16).astype(np.float64)
            else:
                bits = f32_to_bf16(new)
                wire[name] = ("bfloat16", bits)
                values[name] = bf16_to_f32(bits).astype(np.float64)
        sent[agent] = values
        layout = layout_of(wire)
        chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, wire), 4096)]
        agg.receive_update(UpdateHeader(RUN, 1, agent, layout, 10 * (i + 1), {}), iter(chunks))
    give_up = time.time() + 30
    while agg.snapshot(RUN, 1).state != "committed" and time.time() < give_up:
        time.sleep(0.02)

    got = read(model_store, agg.snapshot(RUN, 1).version)
    for name, (dtype, _) in base.items():
        ref = (sent["a"][name] * 10 + sent["b"][name] * 20) / 30
        if dtype == "float32":
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)


def test_an_uncompressed_update_is_refused_where_int8_is_expected(model_store, tmp_path):
    from fedstream.errors import InvalidLayout

    store_model(model_store, f"{RUN}/000000", random_model(0, 4))
    agg = fresh(model_store, tmp_path, "q")
    agg.open_round(RoundPlan(RUN, 1, "train", f"{RUN}/000000", ("a",), 1, time.time() + 60, "fedavg", "{}", "int8"))
    model = random_model(1, 4)
    layout = layout_of(model)
    chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, model), 4096)]
    with pytest.raises(InvalidLayout, match="sent as int8"):
        agg.receive_update(UpdateHeader(RUN, 1, "a", layout, 5, {}), iter(chunks))
    with pytest.raises(Exception, match="needs uncompressed updates"):
        agg.open_round(RoundPlan(RUN, 2, "train", f"{RUN}/000000", ("a",), 1, time.time() + 60, "median", "{}", "int8"))


def spool_files_and_fds(spool_root):
    """The spool files under ``spool_root`` and this process's descriptors open on them."""
    files = sorted(p for p in spool_root.rglob("*") if p.is_file())
    fds = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since it was listed
        if target.startswith(str(spool_root)):
            fds.append(target)
    return files, fds


@pytest.mark.parametrize("strategy", ["median", "trimmed-mean", "multi-krum"])
def test_a_robust_round_releases_every_upload_spool(strategy, aggregator, agg_channel, model_store, tmp_path):
    store_model(model_store, f"{RUN}/000000", random_model(0, 4))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    agents = ["a", "b", "c", "d", "e"]
    p = plan(RUN, 1, agents, base=f"{RUN}/000000")
    p.strategy.name = strategy
    control.OpenRound(p, timeout=5)

    for i, agent in enumerate(agents):  # one after another: each upload can reuse the last one's spool
        model = random_model(i + 1, 4)
        layout = layout_of(model)
        upload_update(agg_channel, run_id=RUN, round_=1, agent_id=agent, layout=layout,
                      buffers=buffers_of(layout, model), num_examples=10, metrics={}, chunk_bytes=4096, timeout=30)
    event = wait_terminal(control, RUN, 1)
    files, fds = spool_files_and_fds(tmp_path / "spool")
    aggregator.stop(0)
    files_after_stop, fds_after_stop = spool_files_and_fds(tmp_path / "spool")

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert len(files) == 1 and len(fds) == 1, (files, fds)  # the one idle file of the pool
    assert files_after_stop == [] and fds_after_stop == []
