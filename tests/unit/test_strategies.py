"""Strategies: the registry, the weights, and the server optimizers against direct
reference computations on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.errors import InvalidArgument
from fedstream.strategies import REGISTRY, make_strategy
from fedstream.strategies.server_opt import ServerOptParams, adaptive_step
from fedstream.tensors import TensorSpec
from fedstream_tasks.base import cosine_distance, proximal_term


def test_registry_names_and_defaults():
    assert set(REGISTRY) >= {"fedavg", "uniform", "fedprox", "cosine", "fedadagrad", "fedyogi", "fedadam"}
    assert make_strategy().name == "fedavg"
    assert make_strategy("fedadam").params.model_dump() == {"eta": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("fedmagic", {}, "unknown strategy 'fedmagic'; known: cosine, fedadagrad"),
        ("fedprox", {"mu": -1}, "strategy 'fedprox': mu:"),
        ("fedadam", {"beta1": 1.5}, "strategy 'fedadam': beta1:"),
        ("fedavg", {"surprise": 1}, "strategy 'fedavg': surprise:"),
    ],
)
def test_bad_strategies_are_named(name, params, message):
    with pytest.raises(InvalidArgument, match=message):
        make_strategy(name, params)


def test_weights():
    assert make_strategy("fedavg").weight(30, {}) == 30
    assert make_strategy("uniform").weight(30, {}) == 1
    assert make_strategy("cosine").weight(30, {"cosine_distance": 0.25}) == 0.25
    with pytest.raises(InvalidArgument, match="needs the metric 'cosine_distance'"):
        make_strategy("cosine").weight(30, {})
    for d in (0.0, 2.5, 1e308):  # a mean of 1 - cos lies in (0, 2]
        with pytest.raises(InvalidArgument, match=r"must be in \(0, 2\]"):
            make_strategy("cosine").weight(30, {"cosine_distance": d})
    with pytest.raises(InvalidArgument, match="num_examples must be at least 1"):
        make_strategy("fedavg").weight(0, {})
    # FedPav weighs by training images, or by cosine distance (FedReID's two variants).
    assert make_strategy("fedpav").weight(30, {"cosine_distance": 0.25}) == 30
    assert make_strategy("fedpav", {"weights": "cosine"}).weight(30, {"cosine_distance": 0.25}) == 0.25
    with pytest.raises(InvalidArgument, match="strategy 'fedpav' needs the metric 'cosine_distance'"):
        make_strategy("fedpav", {"weights": "cosine"}).weight(30, {})
    with pytest.raises(InvalidArgument, match="strategy 'fedpav': weights:"):
        make_strategy("fedpav", {"weights": "loudest"})


def test_fedpav_distills_every_nth_training_round():
    assert not any(make_strategy("fedpav").distills(n) for n in range(1, 10))
    every3 = make_strategy("fedpav", {"distill_every": 3})
    assert [n for n in range(1, 10) if every3.distills(n)] == [3, 6, 9]
    assert not make_strategy("fedavg").distills(1)
    with pytest.raises(InvalidArgument, match="distill_every"):
        make_strategy("fedpav", {"distill_every": -1})
    with pytest.raises(InvalidArgument, match="distill_lr"):
        make_strategy("fedpav", {"distill_lr": 0})


def test_fedprox_sends_mu_to_agents():
    assert make_strategy("fedprox", {"mu": 0.1}).configure() == {"proximal_mu": 0.1}
    assert make_strategy("fedavg").configure() == {}


def reference_step(kind, x, delta, m, v, p):
    """The paper's update, element by element in Python floats."""
    out = [], [], []
    for xi, di, mi, vi in zip(x, delta, m, v, strict=True):
        mi = p.beta1 * mi + (1 - p.beta1) * di
        if kind == "adagrad":
            vi = vi + di * di
        elif kind == "yogi":
            vi = vi - (1 - p.beta2) * di * di * math.copysign(1.0, vi - di * di) * (vi != di * di)
        else:
            vi = p.beta2 * vi + (1 - p.beta2) * di * di
        out[0].append(xi + p.eta * mi / (math.sqrt(vi) + p.tau))
        out[1].append(mi)
        out[2].append(vi)
    return tuple(np.array(o) for o in out)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["adagrad", "yogi", "adam"]),
    seed=st.integers(0, 1000),
    eta=st.floats(1e-3, 1.0),
    tau=st.floats(1e-6, 1e-1),
)
def test_adaptive_steps_match_the_paper(kind, seed, eta, tau):
    rng = np.random.default_rng(seed)
    p = ServerOptParams(eta=eta, tau=tau)
    x = rng.standard_normal(7)
    m, v = np.zeros(7), np.full(7, tau * tau)
    rx, rm, rv = x.copy(), m.copy(), v.copy()
    for _ in range(3):
        delta = rng.standard_normal(7) * 0.1
        x, m, v = adaptive_step(kind, x, delta, m, v, p)
        rx, rm, rv = reference_step(kind, rx, delta, rm, rv, p)
        np.testing.assert_allclose(x, rx, rtol=1e-12)
        np.testing.assert_allclose(v, rv, rtol=1e-12)


def test_adaptive_strategies_average_integer_tensors_plainly():
    strategy = make_strategy("fedadam")
    spec = TensorSpec("bn.num_batches_tracked", "int64", (), 0, 8)
    mean = np.array([4.0])
    out, state = strategy.server_update(spec, mean, np.array([2.0]), None)
    assert out is mean and state == {}


def test_proximal_term_and_cosine_distance():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    anchor = [torch.tensor([[0.0, 0.0]])]
    assert proximal_term(model, anchor, 0.5).item() == pytest.approx(0.25 * 5)
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    after = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert cosine_distance(before, after) == pytest.approx(0.5)


def test_robust_statistics_match_direct_computations():
    from fedstream.strategies.robust import (
        coordinate_median,
        krum_scores,
        multi_krum_select,
        pairwise_sq_dist_update,
        trimmed_mean,
    )

    x = np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0], [3.0, 1.0]])
    assert coordinate_median(x).tolist() == [2.5, 0.5]
    assert trimmed_mean(x, 0.25).tolist() == [2.5, 0.5]  # drops 1 and 100; -5 and 10
    assert trimmed_mean(x, 0.1).tolist() == x.mean(axis=0).tolist()

    sq = np.zeros((4, 4))
    pairwise_sq_dist_update(sq, x[:, :1])
    pairwise_sq_dist_update(sq, x[:, 1:])
    brute = np.array([[((a - b) ** 2).sum() for b in x] for a in x])
    np.testing.assert_allclose(sq, brute)
    # k=4, f=1: each score sums the 4-1-2 = 1 nearest squared distance.
    expected = [np.sort(np.delete(brute[i], i))[:1].sum() for i in range(4)]
    np.testing.assert_allclose(krum_scores(brute, 1), expected)
    assert 2 not in multi_krum_select(brute, f=1, m=3)


def test_multi_krum_needs_enough_updates():
    strategy = make_strategy("multi-krum", {"f": 1})
    with pytest.raises(Exception, match="needs more than 4 updates, got 4"):
        strategy.select(np.zeros((4, 4)))
