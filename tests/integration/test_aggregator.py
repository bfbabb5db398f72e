"""The aggregator over real gRPC: uploads folded exactly once, every bad upload refused with
its status and a message naming the problem, the accumulator untouched, the round going on."""

from __future__ import annotations

import time
from functools import partial

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedstream.tensors import Layout, iter_chunks
from fedstream.transfer import download_model, upload_update
from fedstream.v1 import aggregator_pb2 as pb
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_testing.helpers import as_float, buffers_of, layout_of, random_model, store_model
from fedstream_testing.support import plan, wait_terminal
from fedstream_testing.support import upload as upload_model

RUN = "run-a"
# This module's uploads: its run, a loss metric, small chunks (several per tensor).
upload = partial(upload_model, run_id=RUN, metrics={"train_loss": 0.5}, chunk_bytes=1000)
BASE = f"{RUN}/000000"


@pytest.fixture
def stubs(agg_channel):
    return (
        pb_grpc.AggregatorControlStub(agg_channel),
        pb_grpc.UpdateServiceStub(agg_channel),  # stock protobuf stub: interoperates with the fast path
        agg_channel,
    )


@pytest.fixture
def base_model(model_store):
    model = random_model(0, scale=16)
    store_model(model_store, BASE, model)
    return model


def raw_requests(agent, model, *, mutate=None, layout_override=None, examples=10, round_=1, chunk_bytes=500):
    """The requests of an upload, as a list that a test may tamper with."""
    layout = layout_of(model)
    header = pb.UploadUpdateRequest(
        header=pb.UpdateHeader(
            run_id=RUN, round=round_, agent_id=agent,
            layout=(layout_override or layout).to_proto(), num_examples=examples,
        )
    )
    chunks = [pb.UploadUpdateRequest(chunk=c.to_proto()) for c in iter_chunks(layout, buffers_of(layout, model), chunk_bytes)]
    if mutate:
        chunks = mutate(chunks)
    return [header, *chunks]


def reference(models_and_weights, layout):
    out = {}
    for t in layout.tensors:
        ref = sum(as_float(t.dtype, m[t.name][1]).reshape(-1) * w for m, w in models_and_weights)
        out[t.name] = ref / sum(w for _, w in models_and_weights)
    return out


def check_model(store, version, expected, layout):
    with store.open(version) as reader:
        data = b"".join(c.data for c in reader.iter_chunks(1 << 20))
    for t in layout.tensors:
        got = np.frombuffer(data[t.offset : t.end], dtype=t.dt.storage)
        if t.dtype == "bool":
            np.testing.assert_array_equal(got, expected[t.name] >= 0.5)
        elif not t.dt.is_float:
            np.testing.assert_array_equal(got, np.rint(expected[t.name]))
        else:
            tol = {"float32": 1e-5, "float64": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[t.dtype]
            np.testing.assert_allclose(as_float(t.dtype, got), expected[t.name], rtol=tol, atol=tol)


def test_health_is_serving(agg_channel):
    health = health_pb2_grpc.HealthStub(agg_channel)
    for service in ("", "fedstream.v1.UpdateService", "fedstream.v1.ModelService", "fedstream.v1.AggregatorControl"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_round_folds_each_update_once_and_commits_the_average(stubs, base_model, model_store):
    control, _updates, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b", "c"], base=BASE), timeout=5)
    ua, ub, uc = random_model(1, 16), random_model(2, 16), random_model(3, 16)

    first = upload(ch, "a", ua, 100)
    again = upload(ch, "a", ua, 100)
    upload(ch, "b", ub, 300, chunk_bytes=7)
    upload(ch, "c", uc, 50, chunk_bytes=65536)
    event = wait_terminal(control, RUN, 1)

    assert not first.duplicate and first.bytes_received == layout_of(ua).total_bytes
    assert again.duplicate
    assert event.state == round_pb2.ROUND_STATE_COMMITTED
    assert event.version == f"{RUN}/000001"
    assert sorted((r.agent_id, r.num_examples) for r in event.reports) == [("a", 100), ("b", 300), ("c", 50)]
    assert list(event.stragglers) == []
    layout = layout_of(ua)
    check_model(model_store, event.version, reference([(ua, 100), (ub, 300), (uc, 50)], layout), layout)
    downloaded = download_model(ch, RUN, "")  # the server's 4 KiB chunks, cut across tensors
    assert downloaded.version == event.version
    with model_store.open(event.version) as reader:
        assert bytes(downloaded.buffer.data) == b"".join(c.data for c in reader.iter_chunks(1 << 20))


def test_reopening_the_same_plan_is_a_no_op_and_another_plan_is_refused(stubs, base_model):
    control, _, _ = stubs
    p = plan(RUN, 1, ["a", "b"], base=BASE)
    control.OpenRound(p, timeout=5)
    control.OpenRound(p, timeout=5)
    other = pb.RoundPlan()
    other.CopyFrom(p)
    other.participants.append("c")
    with pytest.raises(grpc.RpcError) as e:
        control.OpenRound(other, timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def tamper_crc(chunks):
    chunks[1].chunk.crc32c ^= 0xDEAD
    return chunks


def make_gap(chunks):
    return [chunks[0], *chunks[2:]]


def make_overlap(chunks):
    return [chunks[0], chunks[0], *chunks[1:]]


def truncate(chunks):
    return chunks[:-1]


def chunk_first(chunks):
    return chunks


def bad_cases(model):
    layout = layout_of(model)
    renamed = {("extra.weight" if k == "conv.bias" else k): v for k, v in model.items()}
    reshaped = Layout.build((n, d, (a.size,) if n == "conv.weight" else a.shape) for n, (d, a) in model.items())
    retyped = Layout.build((n, "float16" if n == "conv.bias" else d, a.shape) for n, (d, a) in model.items())
    return [
        ("unknown tensor", dict(model=renamed), grpc.StatusCode.INVALID_ARGUMENT, "unknown tensor names: 'extra.weight'"),
        ("wrong shape", dict(layout_override=reshaped), grpc.StatusCode.INVALID_ARGUMENT, "tensor 'conv.weight': shape"),
        ("wrong dtype", dict(layout_override=retyped), grpc.StatusCode.INVALID_ARGUMENT, "dtype float16, expected float32"),
        ("bad checksum", dict(mutate=tamper_crc), grpc.StatusCode.DATA_LOSS, "checksum mismatch in chunk at offset 500"),
        ("gap", dict(mutate=make_gap), grpc.StatusCode.INVALID_ARGUMENT, "gap: bytes 500..1000 are missing"),
        ("overlap", dict(mutate=make_overlap), grpc.StatusCode.INVALID_ARGUMENT, "overlaps bytes already received"),
        ("truncated", dict(mutate=truncate), grpc.StatusCode.DATA_LOSS, f"of {layout.total_bytes} bytes"),
        ("unknown round", dict(round_=7), grpc.StatusCode.NOT_FOUND, "round 7 of run 'run-a'"),
        ("no examples", dict(examples=0), grpc.StatusCode.INVALID_ARGUMENT, "num_examples must be at least 1"),
    ]


def test_every_bad_upload_is_refused_and_changes_nothing(stubs, base_model, model_store):
    control, updates, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b"], base=BASE), timeout=5)
    good_a, good_b = random_model(11, 16), random_model(12, 16)

    for name, kwargs, code, message in bad_cases(good_a):
        model = kwargs.pop("model", good_a)
        with pytest.raises(grpc.RpcError) as e:
            updates.UploadUpdate(iter(raw_requests("a", model, **kwargs)), timeout=10)
        assert e.value.code() == code, name
        assert message in e.value.details(), (name, e.value.details())
        snapshot = next(control.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=1), timeout=5))
        assert snapshot.state == round_pb2.ROUND_STATE_TRAINING and not snapshot.reports, name

    with pytest.raises(grpc.RpcError) as e:
        updates.UploadUpdate(iter(raw_requests("mallory", good_a)), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent 'mallory' was not selected" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        updates.UploadUpdate(iter(raw_requests("a", good_a)[1:]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message of an upload must be its header" in e.value.details()

    upload(ch, "a", good_a, 10)
    upload(ch, "b", good_b, 30)
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED
    layout = layout_of(good_a)
    check_model(model_store, event.version, reference([(good_a, 10), (good_b, 30)], layout), layout)
    # "a" already counted: a retry after the commit is answered as a duplicate, never folded.
    assert upload(ch, "a", good_a, 10).duplicate


def test_upload_to_a_closed_round_is_failed_precondition(stubs, base_model):
    control, _updates, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b"], base=BASE), timeout=5)
    upload(ch, "a", random_model(1, 16), 10)
    upload(ch, "b", random_model(2, 16), 10)
    wait_terminal(control, RUN, 1)
    control.OpenRound(plan(RUN, 2, ["a", "b"], base=BASE, min_updates=1, timeout=1.0), timeout=5)
    upload(ch, "a", random_model(1, 16), 10, round_=2)
    wait_terminal(control, RUN, 2)

    with pytest.raises(grpc.RpcError) as e:
        upload(ch, "b", random_model(2, 16), 10, round_=2)

    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not accepting updates" in e.value.details()


def test_deadline_commits_with_the_minimum_and_records_stragglers(stubs, base_model):
    control, _updates, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b", "c"], base=BASE, min_updates=2, timeout=1.5), timeout=5)
    upload(ch, "a", random_model(1, 16), 10)
    upload(ch, "c", random_model(3, 16), 10)

    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED
    assert list(event.stragglers) == ["b"]
    assert len(event.reports) == 2


def test_deadline_below_the_minimum_fails_the_round(stubs, base_model):
    control, _updates, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b"], base=BASE, min_updates=2, timeout=1.0), timeout=5)
    upload(ch, "a", random_model(1, 16), 10)

    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_FAILED
    assert event.reason == "deadline passed with 1 of 2 updates, at least 2 needed"
    assert list(event.stragglers) == ["b"]


def test_init_round_stores_the_upload_bit_exactly(stubs, model_store):
    control, _updates, ch = stubs
    control.OpenRound(plan(RUN, 0, ["a"], kind="init"), timeout=5)
    model = random_model(9, 4)
    upload(ch, "a", model, 0, round_=0)

    event = wait_terminal(control, RUN, 0)
    got = download_model(ch, RUN, event.version).buffer.arrays()

    assert event.state == round_pb2.ROUND_STATE_COMMITTED and event.version == f"{RUN}/000000"
    for name, (_, arr) in model.items():
        assert got[name].tobytes() == arr.tobytes()


@pytest.mark.parametrize(
    "mutate, code, message",
    [
        (lambda p: p.ClearField("participants"), grpc.StatusCode.INVALID_ARGUMENT, "at least one participant"),
        (lambda p: setattr(p, "min_updates", 5), grpc.StatusCode.INVALID_ARGUMENT, "min_updates 5"),
        (lambda p: setattr(p, "kind", 0), grpc.StatusCode.INVALID_ARGUMENT, "unknown round kind"),
        (lambda p: setattr(p, "run_id", "Bad Run"), grpc.StatusCode.INVALID_ARGUMENT, "invalid run id"),
        (lambda p: setattr(p, "base_version", "run-a/000042"), grpc.StatusCode.NOT_FOUND, "model run-a/000042 not found"),
        (lambda p: p.participants.append("a"), grpc.StatusCode.INVALID_ARGUMENT, "distinct"),
    ],
)
def test_bad_round_plans(stubs, base_model, mutate, code, message):
    control, _, _ = stubs
    p = plan(RUN, 1, ["a", "b"], base=BASE)
    mutate(p)
    with pytest.raises(grpc.RpcError) as e:
        control.OpenRound(p, timeout=5)
    assert e.value.code() == code
    assert message in e.value.details()


def test_download_errors(stubs, base_model):
    _, _, ch = stubs
    with pytest.raises(grpc.RpcError) as e:
        download_model(ch, RUN, f"{RUN}/000099")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        download_model(ch, "no-such-run")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no committed model" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        download_model(ch, RUN, BASE, chunk_bytes=8 << 20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_of_an_unknown_round_is_not_found(stubs):
    control, _, _ = stubs
    with pytest.raises(grpc.RpcError) as e:
        wait_terminal(control, RUN, 3)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_finished_rounds_are_forgotten_beyond_a_bound(tmp_path, model_store, monkeypatch):
    from fedstream.errors import RoundNotFound
    from fedstream.rounds import RoundPlan
    from fedstream.state import MemoryStateStore
    from fedstream_aggregator import rounds
    from fedstream_aggregator.service import AggregatorService

    monkeypatch.setattr(rounds, "KEEP_FINISHED_ROUNDS", 2)
    store_model(model_store, BASE, random_model(0))
    agg = AggregatorService(MemoryStateStore(), model_store, tmp_path / "spool", chunk_bytes=4096)
    for r in range(1, 5):
        agg.open_round(RoundPlan(RUN, r, "train", BASE, ("a",), 1, time.time() + 0.2))
    give_up = time.time() + 30  # every deadline passes with no update: all four fail
    while not all(agg.snapshot(RUN, r).state == "failed" for r in range(1, 5)) and time.time() < give_up:
        time.sleep(0.05)
    agg.open_round(RoundPlan(RUN, 5, "train", BASE, ("a",), 1, time.time() + 30))

    assert [agg.snapshot(RUN, r).state for r in (3, 4, 5)] == ["failed", "failed", "training"]
    for r in (1, 2):
        with pytest.raises(RoundNotFound):
            agg.snapshot(RUN, r)
    agg.close()
    assert not list((tmp_path / "spool").rglob("*"))


def evaluation_plan(participants, version=BASE, min_updates=0, timeout=30.0):
    p = plan(RUN, 5, participants, base=version, min_updates=min_updates, timeout=timeout)
    p.kind = round_pb2.ROUND_KIND_EVALUATE
    return p


def report(ch, agent, examples, metrics, model=None, round_=5):
    """An evaluation report: a header with no tensors, or with ``model``'s layout and bytes (a
    well-formed upload, so that what the server answers is all the client sees)."""
    layout = layout_of(model) if model is not None else Layout(())
    return upload_update(
        ch, run_id=RUN, round_=round_, agent_id=agent, layout=layout,
        buffers=buffers_of(layout, model) if model is not None else [],
        num_examples=examples, metrics=metrics, timeout=30,
    )


def test_evaluation_round_combines_reports_by_example_count(stubs, base_model, model_store):
    control, _, ch = stubs
    control.OpenRound(evaluation_plan(["a", "b", "c"]), timeout=5)
    report(ch, "a", 30, {"map50": 0.5, "map": 0.2})
    report(ch, "b", 10, {"map50": 0.9, "map": 0.4})
    report(ch, "c", 60, {"map50": 0.1})  # a metric it lacks is averaged over the others
    event = wait_terminal(control, RUN, 5)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert event.version == BASE
    expected = {"map50": (30 * 0.5 + 10 * 0.9 + 60 * 0.1) / 100, "map": (30 * 0.2 + 10 * 0.4) / 40}
    assert dict(event.metrics) == pytest.approx(expected)
    (record,) = model_store.evaluations(BASE).values()
    assert record["metrics"] == pytest.approx(expected)
    assert record["examples"] == 100 and record["round"] == 5
    assert model_store.versions(RUN) == [BASE]  # nothing committed


def test_evaluation_round_bad_inputs(stubs, base_model):
    control, _, ch = stubs
    with pytest.raises(grpc.RpcError) as err:
        control.OpenRound(evaluation_plan(["a"], version=f"{RUN}/000042"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    control.OpenRound(evaluation_plan(["a", "b"], min_updates=1, timeout=2), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        report(ch, "a", 10, {"map": 0.1}, model=base_model)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "layout must be empty" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        report(ch, "a", 0, {"map": 0.1})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "number of examples" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        report(ch, "a", 10, {"map": float("nan")})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    report(ch, "a", 10, {"map": 0.3})  # still open after the bad reports
    event = wait_terminal(control, RUN, 5)  # at the deadline, with 1 of 2
    assert event.state == round_pb2.ROUND_STATE_COMMITTED
    assert dict(event.metrics) == pytest.approx({"map": 0.3})
    assert list(event.stragglers) == ["b"]


def poisoned(model, name, value, index=3):
    out = {k: (d, a.copy()) for k, (d, a) in model.items()}
    dtype, arr = out[name]
    flat = arr.reshape(-1)
    if dtype == "bfloat16":
        flat[index] = {"nan": 0x7FC0, "inf": 0x7F80, "-inf": 0xFF80}[value]
    else:
        flat[index] = float(value)
    return out


@pytest.mark.parametrize(("tensor", "value"), [("conv.weight", "nan"), ("half.weight", "inf"),
                                                ("bf.weight", "-inf"), ("double.weight", "nan")])
def test_non_finite_updates_are_refused_at_ingest(stubs, base_model, model_store, tensor, value):
    control, _, ch = stubs
    control.OpenRound(plan(RUN, 1, ["a", "b"], base=BASE), timeout=5)
    good_a, good_b = random_model(11, 16), random_model(12, 16)
    with pytest.raises(grpc.RpcError) as e:
        upload(ch, "a", poisoned(good_a, tensor, value), 10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"tensor {tensor!r} holds NaN or infinite values (first at element 3)" in e.value.details()
    snapshot = next(control.WatchRound(pb.WatchRoundRequest(run_id=RUN, round=1), timeout=5))
    assert snapshot.state == round_pb2.ROUND_STATE_TRAINING and not snapshot.reports
    # The same agent's sound update is then accepted; the round's mean never saw the bad one.
    upload(ch, "a", good_a, 10)
    upload(ch, "b", good_b, 30)
    event = wait_terminal(control, RUN, 1)
    layout = layout_of(good_a)
    check_model(model_store, event.version, reference([(good_a, 10), (good_b, 30)], layout), layout)
