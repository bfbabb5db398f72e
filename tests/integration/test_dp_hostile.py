"""Differential privacy against hostile sites on the real aggregator (gRPC on loopback): a
change of any size moves a central-mode round's committed mean by at most C / n; one too large
to measure and one holding NaN are refused, counting nothing; a private training round keeps no
site's example count or training metrics (they are not privatized), while an evaluation round
of a private run reports its metrics.

Not tested, because it cannot be detected: a local-mode site that skips noising its change
(the aggregator sees a clipped change either way); docs/privacy.md says what local mode trusts."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest
from test_dp_aggregation import BASE, RUN, clipped_mean, model_of, private_plan, read, upload, with_norm

from fedstream.convert import plan_to_proto
from fedstream.privacy import DPMode, PrivacySpec
from fedstream.rounds import RoundKind
from fedstream.v1 import aggregator_pb2_grpc as pb_grpc
from fedstream.v1 import round_pb2
from fedstream_testing.helpers import buffers_of, layout_of, store_model
from fedstream_testing.support import upload_tensors, wait_terminal

CLIP = 2.0
# Noise too small to matter: what is checked is where the mean lands.
QUIET = PrivacySpec(DPMode.CENTRAL, CLIP, 1e-9, 10.0, 1e-5)


@pytest.fixture
def control(agg_channel):
    return pb_grpc.AggregatorControlStub(agg_channel)


def floating(model):
    return {k: a.astype(np.float64) for k, (d, a) in model.items() if d.startswith("float")}


def norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(a**2) for a in arrays.values())))


def test_a_huge_change_moves_the_committed_mean_by_at_most_c_over_n(control, agg_channel, model_store):
    rng = np.random.default_rng(11)
    base = model_of(rng, 1000)
    store_model(model_store, BASE, base)
    honest = {a: with_norm(model_of(rng, 1000), 0.5) for a in ("a", "b")}
    huge = {k: (d, np.full_like(a, 3e38) if d.startswith("float") else a) for k, (d, a) in model_of(rng, 1000).items()}
    control.OpenRound(plan_to_proto(private_plan(("a", "b", "c"), QUIET)), timeout=5)

    for agent, change in (*honest.items(), ("c", huge)):
        upload(agg_channel, agent, change, 5)
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got, start = floating({k: ("float", v) for k, v in read(model_store, event.version).items()}), floating(base)
    without = clipped_mean(honest.values(), CLIP)  # the honest changes' sum over the 3 updates
    moved = {k: got[k] - start[k] - without[k] * 2 / 3 for k in without}
    assert norm(moved) <= CLIP / 3 * (1 + 1e-5)
    assert norm(moved) == pytest.approx(CLIP / 3, rel=1e-3)  # clipped to C, not dropped


def test_changes_too_large_to_measure_or_not_finite_are_refused_counting_nothing(control, agg_channel, model_store):
    rng = np.random.default_rng(12)
    base = model_of(rng, 100)
    store_model(model_store, BASE, base)
    plan = dataclasses.replace(private_plan(("a", "b", "c", "d"), QUIET), min_updates=2, target_updates=2)
    control.OpenRound(plan_to_proto(plan), timeout=5)
    overflowing = {**model_of(rng, 100), "double": ("float64", np.full(5, 1e200))}  # its squares overflow
    nan = {**model_of(rng, 100), "w": ("float32", np.full(100, np.nan, np.float32))}

    with pytest.raises(grpc.RpcError) as too_large:
        upload(agg_channel, "c", overflowing, 5)
    with pytest.raises(grpc.RpcError) as not_finite:
        upload(agg_channel, "d", nan, 5)
    for agent in ("a", "b"):
        upload(agg_channel, agent, with_norm(model_of(rng, 100), 0.5), 5)
    event = wait_terminal(control, RUN, 1)

    assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too large to clip to privacy.clip_norm" in too_large.value.details()
    assert not_finite.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds NaN or infinite values" in not_finite.value.details()
    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert sorted(r.agent_id for r in event.reports) == ["a", "b"]


def test_a_private_training_round_keeps_no_example_counts_nor_training_metrics(control, agg_channel, model_store):
    rng = np.random.default_rng(13)
    store_model(model_store, BASE, model_of(rng, 50))
    control.OpenRound(plan_to_proto(private_plan(("a", "b"), QUIET)), timeout=5)

    for agent, examples in (("a", 17), ("b", 4000)):
        change = with_norm(model_of(rng, 50), 0.5)
        layout = layout_of(change)
        upload_tensors(agg_channel, agent, layout, buffers_of(layout, change), examples, run_id=RUN,
                       metrics={"train_loss": 0.25, "examples_seen": float(examples)})
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert [(r.num_examples, dict(r.metrics)) for r in event.reports] == [(0, {}), (0, {})]
    participants = model_store.lineage(event.version)["participants"]
    assert [(p["examples"], p["metrics"]) for p in participants] == [(0, {}), (0, {})]
    assert model_store.info(event.version).metadata["fedstream.examples"] == "0"


def test_an_evaluation_round_of_a_private_run_reports_its_metrics(control, agg_channel, model_store):
    store_model(model_store, BASE, model_of(np.random.default_rng(14), 10))
    evaluation = dataclasses.replace(private_plan(("a",), QUIET), kind=RoundKind.EVALUATE)
    control.OpenRound(plan_to_proto(evaluation), timeout=5)

    upload_tensors(agg_channel, "a", layout_of({}), [], 120, run_id=RUN, metrics={"accuracy": 0.75})
    event = wait_terminal(control, RUN, 1)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    assert [(r.num_examples, dict(r.metrics)) for r in event.reports] == [(120, {"accuracy": 0.75})]
