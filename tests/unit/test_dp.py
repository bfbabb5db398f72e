"""Differential privacy's arithmetic (fedstream.dp), the rules of what it combines with
(fedstream.privacy_rules), and the agent's clipping and noising of its change."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.dp import (
    change_norm,
    clip_factor,
    clip_tensors,
    gaussian_noise,
    noise_generator,
    tensors_norm,
)
from fedstream.errors import InvalidArgument
from fedstream.privacy import DPMode, PrivacySpec, SecureAggregationSpec
from fedstream.privacy_rules import check_combination
from fedstream.rounds import TrainingConfig
from fedstream.strategies import make_strategy
from fedstream.tensors import FlatBuffer
from fedstream_agent.privacy import privatize, reported
from fedstream_testing.helpers import as_float, buffers_of, layout_of, random_model

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def spec(mode: DPMode = DPMode.CENTRAL, clip: float = 1.0, z: float = 1.0) -> PrivacySpec:
    return PrivacySpec(mode, clip, z, 10.0, 1e-5)


def flat(model):
    layout = layout_of(model)
    buf = FlatBuffer(layout)
    for t, b in zip(layout.tensors, buffers_of(layout, model), strict=True):
        buf.write(t.offset, bytes(b))

    def read_into(offset: int, out: memoryview) -> None:
        out[:] = buf.data[offset : offset + len(out)]

    return layout, read_into


@settings(max_examples=60, deadline=None)
@given(norm=st.floats(0, 1e30, allow_nan=False), clip=st.floats(1e-6, 1e6))
def test_the_clip_factor_brings_a_norm_within_the_bound(norm, clip):
    factor = clip_factor(norm, clip)

    assert 0 < factor <= 1
    assert norm * factor <= clip * (1 + 1e-12)
    if norm <= clip:
        assert factor == 1.0


def test_a_zero_change_is_not_scaled_and_bad_figures_are_refused():
    assert clip_factor(0.0, 1.0) == 1.0
    for norm, clip, why in ((math.nan, 1.0, "norm"), (-1.0, 1.0, "norm"), (1.0, 0.0, "clip_norm"), (1.0, math.inf, "clip_norm")):
        with pytest.raises(ValueError, match=why):
            clip_factor(norm, clip)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.lists(finite, min_size=0, max_size=40), min_size=1, max_size=4),
       clip=st.floats(1e-3, 1e3))
def test_clipping_numpy_tensors_leaves_their_joint_norm_at_most_the_bound(values, clip):
    tensors = {f"t{i}": np.array(v, dtype=np.float32) for i, v in enumerate(values)}
    tensors["count"] = np.array([7], dtype=np.int64)
    direct = math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for k, v in tensors.items() if k != "count"))
    before = {k: v.copy() for k, v in tensors.items()}

    norm, factor = clip_tensors(tensors, clip)

    assert norm == pytest.approx(direct, rel=1e-9, abs=1e-30)
    assert tensors_norm(tensors) <= clip * (1 + 1e-6) or factor == 1.0
    assert tensors["count"][0] == 7
    for k, v in before.items():
        if k != "count":
            np.testing.assert_allclose(tensors[k], v * np.float32(factor), rtol=1e-6)


def test_clipping_torch_tensors_in_place():
    tensors = {"w": torch.full((4,), 3.0), "b": torch.full((9,), 0.0), "n": torch.tensor(5)}

    norm, factor = clip_tensors(tensors, 1.5)

    assert norm == pytest.approx(6.0) and factor == pytest.approx(0.25)
    assert torch.allclose(tensors["w"], torch.full((4,), 0.75)) and int(tensors["n"]) == 5


def test_the_norm_of_a_laid_out_update_reads_floating_tensors_only():
    model = random_model(3, 4)
    layout, read_into = flat(model)
    floating = [as_float(t.dtype, model[t.name][1]) for t in layout.tensors if t.dt.is_float]
    direct = math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in floating))

    got = change_norm(layout, read_into)

    assert got == pytest.approx(direct, rel=1e-9)


def test_gaussian_noise_has_the_asked_standard_deviation():
    generator = noise_generator()

    samples = gaussian_noise(generator, 400_000, 2.5)

    assert samples.dtype == np.float32
    assert abs(float(samples.mean())) < 0.02  # 5 standard errors of the mean
    assert float(samples.std()) == pytest.approx(2.5, rel=0.01)
    assert gaussian_noise(generator, 10, 1.0, np.float64).dtype == np.float64


def test_two_generators_draw_different_noise():
    a = gaussian_noise(noise_generator(), 16, 1.0)
    b = gaussian_noise(noise_generator(), 16, 1.0)

    assert not np.array_equal(a, b)


def test_noise_refuses_a_bad_deviation_or_dtype():
    for std, dtype, why in ((-1.0, np.float32, "deviation"), (math.inf, np.float32, "deviation"), (1.0, np.int32, "int32")):
        with pytest.raises(ValueError, match=why):
            gaussian_noise(noise_generator(), 4, std, dtype)


@pytest.mark.parametrize(
    "strategy, params, settings_, named",
    [
        ("median", {}, {}, "'median'"),
        ("trimmed-mean", {}, {}, "'trimmed-mean'"),
        ("multi-krum", {}, {}, "'multi-krum'"),
        ("fedpav", {"distill_every": 2}, {}, "distillation"),
        ("fedavg", {}, {"distill": True}, "distillation"),
        ("fedavg", {}, {"compression": "int8"}, "compression 'int8'"),
        ("fedavg", {}, {"buffered": True}, "buffered asynchronous"),
        ("fedavg", {}, {"partial": True}, "shared among aggregators"),
        ("cosine", {}, {}, "cosine weights"),
        ("fedpav", {"weights": "cosine"}, {}, "cosine weights"),
    ],
)
def test_differential_privacy_refuses_what_it_cannot_work_with(strategy, params, settings_, named):
    with pytest.raises(InvalidArgument) as e:
        check_combination(make_strategy(strategy, params), spec(), None, **settings_)

    assert "differential privacy" in e.value.public and named in e.value.public


def test_secure_aggregation_refuses_robust_strategies_and_weights_an_agent_cannot_apply():
    with pytest.raises(InvalidArgument, match=r"secure aggregation \(secure_aggregation\) cannot be combined with strategy 'median'"):
        check_combination(make_strategy("median"), None, SecureAggregationSpec())
    for name, params in (("uniform", {}), ("cosine", {}), ("fedpav", {"weights": "cosine"})):
        with pytest.raises(InvalidArgument, match="its weights need each update"):
            check_combination(make_strategy(name, params), None, SecureAggregationSpec())

    for name in ("fedavg", "fedprox", "fedpav", "fedadam", "fedyogi", "fedadagrad"):
        check_combination(make_strategy(name), None, SecureAggregationSpec())
    check_combination(make_strategy("uniform"), spec(), SecureAggregationSpec())  # every update weighs 1 under DP


def test_secure_aggregation_takes_at_most_a_thousand_participants():
    check_combination(make_strategy("fedavg"), None, SecureAggregationSpec(), participants=1000)
    check_combination(make_strategy("fedavg"), None, None, participants=5000)
    with pytest.raises(InvalidArgument, match=r"secure aggregation \(secure_aggregation\) takes at most 1000 "
                       r"participants per round, not 1001"):
        check_combination(make_strategy("fedavg"), None, SecureAggregationSpec(), participants=1001)


@pytest.mark.parametrize("strategy", ["fedavg", "fedpav", "fedprox", "fedadam", "fedyogi", "fedadagrad", "uniform"])
def test_linear_strategies_take_differential_privacy(strategy):
    check_combination(make_strategy(strategy), spec(DPMode.LOCAL), SecureAggregationSpec())


def test_a_privacy_spec_out_of_range_is_refused():
    with pytest.raises(InvalidArgument, match=r"privacy\.clip_norm"):
        check_combination(make_strategy("fedavg"), spec(clip=-1.0), None)


def trained(d: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base = {"w": torch.zeros(d), "bn.running_mean": torch.ones(3), "bn.num_batches_tracked": torch.tensor(4)}
    state = {"w": torch.full((d,), 5.0), "bn.running_mean": torch.full((3,), 2.0), "bn.num_batches_tracked": torch.tensor(9)}
    return state, base


def test_local_privacy_clips_then_noises_the_change(caplog):
    d, clip, z = 50_000, 2.0, 0.01
    state, base = trained(d)
    training = TrainingConfig(privacy=spec(DPMode.LOCAL, clip, z))

    with caplog.at_level(logging.INFO, logger="fedstream_agent.privacy"):
        out = privatize(training, state, base)

    # The clipped change has norm C; the noise adds about sqrt(d) z C in quadrature.
    expected = math.sqrt(clip**2 + d * (z * clip) ** 2)
    assert tensors_norm(out) == pytest.approx(expected, rel=0.02)
    assert int(out["bn.num_batches_tracked"]) == 9  # travels as it is: the aggregator keeps the base's
    assert float(out["bn.running_mean"].mean()) < 1.0  # the statistic travels as a (clipped) change
    assert "update clipped to 2 (norm" in caplog.text and "and noised (0.01)" in caplog.text


def test_central_privacy_leaves_the_change_to_the_aggregator_unless_secure_aggregation_hides_it():
    state, base = trained(10)
    plain = privatize(TrainingConfig(privacy=spec(DPMode.CENTRAL, 1.0)), dict(state), base)
    hidden = privatize(TrainingConfig(privacy=spec(DPMode.CENTRAL, 1.0), secure_aggregation=SecureAggregationSpec()),
                       dict(state), base)

    assert torch.allclose(plain["w"], torch.full((10,), 5.0))
    assert tensors_norm(hidden) == pytest.approx(1.0, rel=1e-6)


def test_under_privacy_an_upload_declares_no_example_count_nor_metrics():
    metrics = {"train_loss": 0.3, "download_seconds": 1.0}

    for privacy in (spec(), spec(DPMode.LOCAL)):
        assert reported(TrainingConfig(privacy=privacy), 120, metrics) == (0, {})
    assert reported(TrainingConfig(secure_aggregation=SecureAggregationSpec()), 120, metrics) == (120, metrics)
    assert reported(TrainingConfig(), 120, metrics) == (120, metrics)
