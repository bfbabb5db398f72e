"""The privacy accountant against published figures: TensorFlow Privacy's MNIST DP-SGD table
(the library's RDP of the same events, converted as the table was), the exact privacy of
composed unsampled Gaussian mechanisms (Gaussian DP, Dong, Roth and Su 2019), and how the
ledger composes central and local charges."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedstream.accounting import Charge, epsilon
from fedstream.privacy import DPMode

# tensorflow/privacy, tutorials/README.md, "Select Parameters": MNIST (60,000 examples),
# batches of 256 drawn by Poisson sampling, epsilon at delta 1e-5 (noise multiplier, epochs, eps).
TF_PRIVACY_TABLE = [(1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20)]
TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon at ``delta`` of a mu-GDP mechanism (Dong, Roth and Su 2019, Corollary
    2.13: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)), by bisection."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if phi(-mid / mu + mu / 2) - math.exp(mid) * phi(-mid / mu - mu / 2) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def central(round_no: int, z: float, selected: int, eligible: int) -> Charge:
    return Charge("run-a", round_no, DPMode.CENTRAL, z, selected, eligible)


def local(round_no: int, z: float, sites: tuple[str, ...]) -> Charge:
    return Charge("run-a", round_no, DPMode.LOCAL, z, len(sites), len(sites), sites)


@pytest.mark.parametrize(("z", "epochs", "published"), TF_PRIVACY_TABLE)
def test_the_library_reproduces_tensorflow_privacys_published_epsilons(z, epochs, published):
    q, steps = 256 / 60000, epochs * 60000 // 256
    accountant = rdp.RdpAccountant(TF_ORDERS)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)

    # The table converts RDP to (epsilon, delta) by eps = min over orders of rdp - log(delta)/(order - 1).
    classic = min(np.asarray(accountant._rdp) - math.log(1e-5) / (np.asarray(accountant._orders) - 1))
    improved = accountant.get_epsilon(1e-5)

    assert classic == pytest.approx(published, abs=0.03)
    assert improved <= classic  # the library's conversion is tighter, never looser


@pytest.mark.parametrize(("rounds", "z"), [(1, 2.0), (10, 4.0), (100, 10.0), (50, 2.0)])
def test_local_rounds_match_the_exact_gaussian_dp_figure_within_ten_percent(rounds, z):
    charges = [local(i, z, ("site-a",)) for i in range(1, rounds + 1)]
    # Under replacement a site's clipped change moves by 2C: noise zC is z/2 relative to it,
    # and T rounds compose to mu-GDP with mu = sqrt(T) / (z/2).
    exact = gdp_epsilon(math.sqrt(rounds) / (z / 2), 1e-5)

    eps = epsilon(charges, 1e-5)

    assert exact <= eps <= 1.10 * exact  # RDP is an upper bound, a few per cent above the exact figure


def test_central_rounds_selecting_every_site_are_unsampled_gaussians():
    charges = [central(i, 4.0, 10, 10) for i in range(1, 21)]

    assert epsilon(charges, 1e-5) == pytest.approx(epsilon([local(i, 4.0, ("a",)) for i in range(1, 21)], 1e-5))


def test_sampling_sites_amplifies_and_more_rounds_spend_more():
    full = epsilon([central(i, 2.0, 10, 10) for i in range(1, 11)], 1e-5)
    sampled = epsilon([central(i, 2.0, 3, 10) for i in range(1, 11)], 1e-5)
    longer = epsilon([central(i, 2.0, 3, 10) for i in range(1, 21)], 1e-5)

    assert 0 < sampled < full
    assert sampled < longer


def test_a_local_ledger_reports_its_most_charged_site():
    busy = [local(i, 2.0, ("a", "b")) for i in range(1, 6)]
    quiet = [local(i, 2.0, ("a",)) for i in range(6, 9)]

    assert epsilon(busy + quiet, 1e-5) == pytest.approx(epsilon([local(i, 2.0, ("a",)) for i in range(1, 9)], 1e-5))


def test_a_site_spends_the_central_rounds_and_its_local_ones():
    mixed = [central(1, 2.0, 4, 4), central(2, 2.0, 4, 4), local(3, 2.0, ("a",))]

    assert epsilon(mixed, 1e-5) > epsilon(mixed[:2], 1e-5)
    assert epsilon(mixed, 1e-5) == pytest.approx(epsilon([local(i, 2.0, ("a",)) for i in range(1, 4)], 1e-5))


def test_every_charge_keeps_its_own_settings():
    noisy = [central(i, 8.0, 10, 10) for i in range(1, 6)]
    changed = [*noisy, central(6, 1.0, 10, 10)]

    assert epsilon(changed, 1e-5) > epsilon([*noisy, central(6, 8.0, 10, 10)], 1e-5)


def test_an_empty_ledger_spent_nothing_and_charges_read_back():
    charge = Charge("run-a", 3, DPMode.LOCAL, 1.5, 2, 5, ("a", "b"), 1.25, 1e-5, 10.0)

    assert epsilon([], 1e-5) == 0.0
    assert Charge.from_dict(charge.to_dict()) == charge
    assert charge.sampling == pytest.approx(0.4)
