"""Buffered asynchronous rounds (FedBuff) on a real aggregator over gRPC: updates from different
base versions counted into the buffer open when they arrive, weighed by example count and
staleness, folded as changes from the base; stale, duplicate and unassigned uploads refused;
a restarted aggregator takes its open buffer back from the journal."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from fedstream.convert import buffer_to_proto
from fedstream.grpcutil import channel
from fedstream.rounds import RoundKind, RoundPlan
from fedstream.staleness import BufferSpec, StalenessFunction
from fedstream.state import MemoryStateStore, SQLiteStateStore
from fedstream.strategies.server_opt import ServerOptParams, adaptive_step
from fedstream.tensors import FlatBuffer, iter_chunks
from fedstream.transfer import upload_status
from fedstream.v1 import aggregator_pb2, aggregator_pb2_grpc
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_testing.helpers import buffers_of, layout_of, store_model
from fedstream_testing.support import plan, upload, wait_terminal

RUN = "run-async"
V0 = f"{RUN}/000000"
BUFFER = BufferSpec(2, 3, StalenessFunction.POLYNOMIAL, a=0.5, b=0.0, max_staleness=1)


def model(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return {
        "w": ("float32", (rng.standard_normal((4, 5)) * scale).astype(np.float32)),
        "b": ("float32", (rng.standard_normal(3) * scale).astype(np.float32)),
        "steps": ("int64", np.array(seed, dtype=np.int64)),
    }


def read(store, version):
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for c in reader.iter_chunks():
            buf.write(c.offset, c.data)
    return buf.arrays()


def open_buffer(control, round_: int, base: str, strategy: str = "fedavg", params: dict | None = None):
    msg = plan(RUN, round_, ["a", "b", "c"], base=base, min_updates=1, timeout=60)
    msg.buffer.CopyFrom(buffer_to_proto(BUFFER))
    msg.strategy.name = strategy
    msg.strategy.params.update(params or {})
    control.OpenRound(msg, timeout=10)


def floats(m):
    return {k: a.astype(np.float64) for k, (d, a) in m.items() if d == "float32"}


def test_updates_from_different_bases_fold_by_weight_and_staleness(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    deltas = {("a", 1): (model(1, 0.1), 10), ("b", 1): (model(2, 0.1), 30),
              ("c", 1): (model(3, 0.1), 20), ("a", 2): (model(4, 0.1), 10)}

    open_buffer(control, 1, V0)
    for agent in "ab":
        upload(agg_channel, agent, deltas[(agent, 1)][0], deltas[(agent, 1)][1], run_id=RUN, round_=1)
    first = wait_terminal(control, RUN, 1)
    open_buffer(control, 2, first.version)
    # c trained from version 0 (assigned in buffer 1): one version behind in buffer 2.
    upload(agg_channel, "c", deltas[("c", 1)][0], 20, run_id=RUN, round_=1)
    upload(agg_channel, "a", deltas[("a", 2)][0], 10, run_id=RUN, round_=2)
    second = wait_terminal(control, RUN, 2)

    assert first.state == second.state == 4  # committed
    assert not second.stragglers
    v0, v1, v2 = floats(model(0)), read(model_store, first.version), read(model_store, second.version)
    w1 = {("a", 1): 10.0, ("b", 1): 30.0}
    w2 = {("c", 1): 20.0 * 2**-0.5, ("a", 2): 10.0}
    for name in v0:
        want1 = v0[name] + sum(floats(deltas[k][0])[name] * w for k, w in w1.items()) / sum(w1.values())
        np.testing.assert_allclose(v1[name], want1, rtol=1e-5, atol=1e-6, err_msg=name)
        want2 = want1 + sum(floats(deltas[k][0])[name] * w for k, w in w2.items()) / sum(w2.values())
        np.testing.assert_allclose(v2[name], want2, rtol=1e-5, atol=1e-6, err_msg=name)
    assert sorted((r.agent_id, r.metrics["staleness"]) for r in second.reports) == [("a", 0.0), ("c", 1.0)]


def test_normalisation_statistics_average_as_values_never_below_zero(aggregator, agg_channel, model_store):
    """A stale agent's running variance comes as its value, not its change from an older base:
    added to a newer base, that change would push the variance below zero."""
    def bn(var: float, weight: float) -> dict:
        return {"bn.running_var": ("float32", np.full(3, var, np.float32)),
                "bn.weight": ("float32", np.full(3, weight, np.float32))}

    store_model(model_store, V0, bn(1.0, 1.0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    open_buffer(control, 1, V0)
    upload(agg_channel, "a", bn(0.05, 0.5), 10, run_id=RUN, round_=1)  # weight: a change of +0.5
    upload(agg_channel, "b", bn(0.05, 0.5), 10, run_id=RUN, round_=1)
    v1 = wait_terminal(control, RUN, 1).version
    open_buffer(control, 2, v1)
    upload(agg_channel, "c", bn(0.07, 0.1), 10, run_id=RUN, round_=1)  # trained from version 0
    upload(agg_channel, "a", bn(0.03, 0.1), 10, run_id=RUN, round_=2)
    v2 = wait_terminal(control, RUN, 2).version

    first, second = read(model_store, v1), read(model_store, v2)
    np.testing.assert_allclose(first["bn.running_var"], 0.05, rtol=1e-6)
    np.testing.assert_allclose(first["bn.weight"], 1.5, rtol=1e-6)
    w = 2**-0.5  # c is one version behind
    np.testing.assert_allclose(second["bn.running_var"], (0.07 * w + 0.03) / (w + 1), rtol=1e-6)
    np.testing.assert_allclose(second["bn.weight"], 1.6, rtol=1e-6)


def test_stale_duplicate_and_unassigned_updates_are_refused(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    open_buffer(control, 1, V0)
    upload(agg_channel, "a", model(1, 0.1), 5, run_id=RUN, round_=1)
    upload(agg_channel, "b", model(2, 0.1), 5, run_id=RUN, round_=1)
    v1 = wait_terminal(control, RUN, 1).version
    open_buffer(control, 2, v1)

    again = upload(agg_channel, "a", model(1, 0.1), 5, run_id=RUN, round_=1)
    assert again.duplicate  # counted in buffer 1 already: never twice
    status = upload_status(agg_channel, RUN, 1, "a", "any", timeout=5)
    assert status is not None and status.counted
    with pytest.raises(grpc.RpcError) as refused:
        upload(agg_channel, "z", model(3, 0.1), 5, run_id=RUN, round_=2)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    upload(agg_channel, "c", model(3, 0.1), 5, run_id=RUN, round_=2)
    upload(agg_channel, "b", model(4, 0.1), 5, run_id=RUN, round_=2)
    v2 = wait_terminal(control, RUN, 2).version
    open_buffer(control, 3, v2)
    # c's update of buffer 1 would be 2 versions behind; the run takes at most 1.
    with pytest.raises(grpc.RpcError) as stale:
        upload(agg_channel, "c", model(5, 0.1), 5, run_id=RUN, round_=1)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2 versions behind" in stale.value.details() and "max_staleness" in stale.value.details()
    assert ("fedstream-error", "stale_update") in (stale.value.trailing_metadata() or ())
    snap = aggregator.service.snapshot(RUN, 3)
    assert snap.reports == [] and snap.state == "training"  # nothing of the refused ones counted


def test_a_buffer_of_a_robust_strategy_is_refused(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    with pytest.raises(grpc.RpcError) as refused:
        open_buffer(control, 1, V0, strategy="median")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot buffer updates" in refused.value.details()


def test_fedadam_steps_on_the_buffered_change(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    params = {"eta": 0.5, "tau": 0.01}
    open_buffer(control, 1, V0, "fedadam", params)
    upload(agg_channel, "a", model(1, 0.1), 10, run_id=RUN, round_=1)
    upload(agg_channel, "b", model(2, 0.1), 30, run_id=RUN, round_=1)
    version = wait_terminal(control, RUN, 1).version

    p = ServerOptParams(**params)
    got = read(model_store, version)
    for name, x in floats(model(0)).items():
        mean_delta = (floats(model(1, 0.1))[name] * 10 + floats(model(2, 0.1))[name] * 30) / 40
        m, v = np.zeros_like(x), np.full_like(x, p.tau**2)
        want, _, _ = adaptive_step("adam", x, mean_delta, m, v, p)
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def _send(agg, agent, m, examples, round_):
    layout = layout_of(m)
    chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(layout, buffers_of(layout, m), 999)]
    return agg.receive_update(UpdateHeader(RUN, round_, agent, layout, examples, {}), iter(chunks))


def test_a_restarted_aggregator_takes_its_open_buffer_back(model_store, tmp_path):
    journal = SQLiteStateStore(tmp_path / "state.db", "t1")
    store_model(model_store, V0, model(0))
    buffer = BufferSpec(3, 3, StalenessFunction.CONSTANT, max_staleness=2)

    def make(name):
        return AggregatorService(journal, model_store, tmp_path / name, chunk_bytes=4096, durable=True)

    first = make("one")
    first.open_round(RoundPlan(RUN, 1, RoundKind.TRAIN, V0, ("a", "b", "c"), 1, time.time() + 60, buffer=buffer))
    _send(first, "a", model(1, 0.1), 10, 1)
    _send(first, "b", model(2, 0.1), 20, 1)
    first.close()  # gone between count and commit

    second = make("two")
    assert second.recover() == 1
    duplicate, _ = _send(second, "b", model(2, 0.1), 20, 1)
    _send(second, "c", model(3, 0.1), 30, 1)
    give_up = time.time() + 30
    while second.snapshot(RUN, 1).state != "committed" and time.time() < give_up:
        time.sleep(0.02)
    snap = second.snapshot(RUN, 1)

    assert duplicate and snap.state == "committed"
    assert sorted(r.agent_id for r in snap.reports) == ["a", "b", "c"]
    got = read(model_store, snap.version)
    for name, x in floats(model(0)).items():
        mean = sum(floats(model(s, 0.1))[name] * n for s, n in ((1, 10), (2, 20), (3, 30))) / 60
        np.testing.assert_allclose(got[name], x + mean, rtol=1e-5, atol=1e-6, err_msg=name)
    second.close()


def test_plan_event_reports_do_not_leak_internal_keys(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    open_buffer(control, 1, V0)
    upload(agg_channel, "a", model(1, 0.1), 5, run_id=RUN, round_=1)
    events = control.WatchRound(aggregator_pb2.WatchRoundRequest(run_id=RUN, round=1), timeout=5)
    first = next(iter(events))
    events.cancel()
    assert [r.agent_id for r in first.reports] == ["a"]


def test_an_update_arriving_between_buffers_waits_and_counts_in_the_next(aggregator, agg_channel, model_store):
    store_model(model_store, V0, model(0))
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    open_buffer(control, 1, V0)
    upload(agg_channel, "a", model(1, 0.1), 5, run_id=RUN, round_=1)
    upload(agg_channel, "b", model(2, 0.1), 5, run_id=RUN, round_=1)
    v1 = wait_terminal(control, RUN, 1).version
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(upload, agg_channel, "c", model(3, 0.1), 5, run_id=RUN, round_=1)
        time.sleep(0.5)  # no buffer open: the whole update waits for the next one
        assert not late.done()
        open_buffer(control, 2, v1)
        assert not late.result(timeout=30).duplicate

    snap = aggregator.service.snapshot(RUN, 2)
    assert [(r.agent_id, r.metrics["staleness"]) for r in snap.reports] == [("c", 1.0)]


def test_agents_send_normalisation_statistics_as_values_and_parameters_as_changes():
    import torch

    from fedstream_agent.changes import as_changes

    base = {"conv.weight": torch.ones(2), "bn.running_var": torch.ones(2), "bn.running_mean": torch.zeros(2),
            "bn.num_batches_tracked": torch.tensor(5)}
    trained = {"conv.weight": torch.full((2,), 1.5), "bn.running_var": torch.full((2,), 0.2),
               "bn.running_mean": torch.full((2,), 0.3), "bn.num_batches_tracked": torch.tensor(9)}
    sent = as_changes(trained, base)
    assert sent["conv.weight"].tolist() == [0.5, 0.5]
    assert torch.allclose(sent["bn.running_var"], torch.full((2,), 0.2))
    assert torch.allclose(sent["bn.running_mean"], torch.full((2,), 0.3))
    assert int(sent["bn.num_batches_tracked"]) == 9
    from fedstream.staleness import is_statistic

    assert is_statistic("features.1.running_var") and not is_statistic("running_var_scale.weight")


def test_retention_keeps_the_bases_asynchronous_agents_may_train_from(tmp_path, model_store):
    """keep_last 1, max_staleness 1: the two newest versions stay (an agent may still be
    training from the one before the newest), older ones go."""
    from fedstream_aggregator.server import build_server

    service = AggregatorService(MemoryStateStore("t1"), model_store, tmp_path / "spool", chunk_bytes=4096, keep_last=1)
    server = build_server(service, "127.0.0.1", 0, max_workers=8)
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        store_model(model_store, V0, model(0))
        control = aggregator_pb2_grpc.AggregatorControlStub(ch)
        base = V0
        for n in range(1, 5):
            open_buffer(control, n, base)
            upload(ch, "a", model(n, 0.1), 5, run_id=RUN, round_=n)
            upload(ch, "b", model(n + 10, 0.1), 5, run_id=RUN, round_=n)
            base = wait_terminal(control, RUN, n).version
        want = [f"{RUN}/000003", f"{RUN}/000004"]
        give_up = time.monotonic() + 5  # retention runs just after the commit is announced
        while model_store.versions(RUN) != want and time.monotonic() < give_up:
            time.sleep(0.05)
        assert model_store.versions(RUN) == want
    finally:
        ch.close()
        server.stop(0)
