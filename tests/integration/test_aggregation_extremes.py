"""Extreme but finite updates over real gRPC: values near float32's largest, weighted by huge
example counts, commit a finite model equal to the exact mean; a strategy whose result would
not be finite fails the round naming the tensor, and the base stays the latest; a tensor named
like the storage format's reserved key is refused at the header."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedstream.tensors import Layout, TensorSpec
from fedstream.transfer import download_model, upload_update
from fedstream.v1 import aggregator_pb2_grpc, round_pb2
from fedstream_testing.helpers import buffers_of, layout_of, store_model
from fedstream_testing.support import plan, wait_terminal

RUN = "extreme"
BASE = f"{RUN}/000000"
BIG = float(np.finfo(np.float32).max)


def model(fractions: list[float]) -> dict:
    return {"w": ("float32", (np.array(fractions, dtype=np.float64) * BIG).astype(np.float32)),
            "steps": ("int64", np.array([7], dtype=np.int64))}


def train_round(ch, updates: dict[str, tuple[dict, int]], strategy: str, params: dict | None = None):
    control = aggregator_pb2_grpc.AggregatorControlStub(ch)
    p = plan(RUN, 1, list(updates), base=BASE)
    p.strategy.name = strategy
    if params:
        p.strategy.params.update(params)
    control.OpenRound(p, timeout=5)
    for agent, (m, examples) in updates.items():
        layout = layout_of(m)
        upload_update(ch, run_id=RUN, round_=1, agent_id=agent, layout=layout, buffers=buffers_of(layout, m),
                      num_examples=examples, metrics={"cosine_distance": 1.5}, timeout=30)
    return wait_terminal(control, RUN, 1)


UPDATES = {
    "a": (model([1.0, -1.0, 1.0, 0.5]), 2**62),
    "b": (model([1.0, -1.0, 0.999, -0.5]), 2**62 + 2**61),
    "c": (model([0.999, -0.999, 1.0, 1e-30]), 3),
    "d": (model([1.0, -1.0, 1.0, 1.0]), 1),  # four: the median is a mean of two at the largest
}


@pytest.mark.parametrize("strategy, params", [
    ("fedavg", None), ("uniform", None), ("fedprox", None), ("cosine", None),
    ("median", None), ("trimmed-mean", {"beta": 0.0}), ("multi-krum", {"f": 0}),
])
def test_extreme_finite_updates_commit_a_finite_mean(strategy, params, agg_channel, model_store):
    store_model(model_store, BASE, model([0.0, 0.0, 0.0, 0.0]))

    event = train_round(agg_channel, UPDATES, strategy, params)

    assert event.state == round_pb2.ROUND_STATE_COMMITTED, event.reason
    got = download_model(agg_channel, RUN, event.version).buffer.arrays()["w"].astype(np.float64)
    values = np.stack([m["w"][1].astype(np.float64) for m, _ in UPDATES.values()])
    if strategy == "median":
        want = np.median(values, axis=0)
    else:
        weights = np.array([float(n) if strategy in ("fedavg", "fedprox") else 1.0 for _, n in UPDATES.values()])
        want = (values * (weights / weights.sum())[:, None]).sum(axis=0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * BIG)


def test_a_result_that_would_not_be_finite_fails_the_round_naming_the_tensor(agg_channel, model_store):
    """FedAdam's step from a base at float32's largest towards updates at its largest of the
    other sign: the second moment (the squared change) is past float32's range."""
    store_model(model_store, BASE, model([1.0, 1.0, 0.0, 0.0]))
    updates = {"a": (model([-1.0, -1.0, 0.0, 0.0]), 10)}

    event = train_round(agg_channel, updates, "fedadam", {"eta": 1.0})

    assert event.state == round_pb2.ROUND_STATE_FAILED
    assert "tensor 'w/v' would hold NaN or infinite values" in event.reason, event.reason
    assert model_store.latest(RUN) == BASE and not model_store.exists(f"{RUN}/000001")


def test_a_reserved_tensor_name_is_refused_at_the_header(agg_channel, model_store):
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    control.OpenRound(plan(RUN, 0, ["a"], kind="init", timeout=5), timeout=5)
    # Built by hand: Layout.build would refuse the name on this side already.
    layout = Layout((TensorSpec("__metadata__", "float32", (2,), 0, 8),))

    with pytest.raises(grpc.RpcError) as e:
        upload_update(agg_channel, run_id=RUN, round_=0, agent_id="a", layout=layout,
                      buffers=[np.ones(2, dtype=np.float32).data], num_examples=1, metrics={}, timeout=30)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'__metadata__'" in e.value.details() and "reserved" in e.value.details()
    assert model_store.latest(RUN) is None


def test_an_int8_scale_that_decodes_past_float32_is_refused_naming_it(agg_channel, model_store):
    store_model(model_store, BASE, {"w": ("float32", np.zeros(3, dtype=np.float32))})
    control = aggregator_pb2_grpc.AggregatorControlStub(agg_channel)
    p = plan(RUN, 1, ["a", "b"], base=BASE, min_updates=1)
    p.compression = "int8"
    control.OpenRound(p, timeout=5)
    wire = {"w": ("int8", np.array([127, -1, 0], dtype=np.int8)), "w:scale": ("float32", np.float32(BIG / 100))}
    layout = layout_of(wire)

    with pytest.raises(grpc.RpcError) as e:
        upload_update(agg_channel, run_id=RUN, round_=1, agent_id="a", layout=layout, buffers=buffers_of(layout, wire),
                      num_examples=1, metrics={}, timeout=30)

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor 'w:scale'" in e.value.details() and "past float32's range" in e.value.details()
