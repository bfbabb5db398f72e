"""The privacy accountant: the epsilon a ledger of differentially private training rounds has
spent, at a delta, computed with Google's ``dp-accounting`` library. Pure functions: the
scheduler charges each federation's ledger with them, and an agent its own local releases.

Why this library: it is maintained by Google's differential privacy team, offers both the RDP
and the privacy loss distribution (PLD) accountants over one vocabulary of ``DpEvent``s, and is
what TensorFlow Privacy and TensorFlow Federated account with; it needs no PyTorch (Opacus's
accountant does), so the scheduler stays torch-free.

What is accounted, and under which assumptions:

- User-level privacy: a site is a user, and two federations are neighbours when one site's data
  is replaced by any other (``REPLACE_ONE``): the set of sites is known to the scheduler, what
  is protected is what each site's data holds. Under replacement the L2 sensitivity of a sum of
  updates clipped to C is 2C, so noise of standard deviation z*C is a Gaussian mechanism of
  noise multiplier z/2 relative to it.
- Central mode: a training round is one Gaussian mechanism on the sum of the selected sites'
  clipped changes. The scheduler selects a fixed number of sites uniformly without replacement
  among the eligible ones (live, enabled and offering the task when the round is planned), so a
  round is a ``SampledWithoutReplacementDpEvent`` (Wang, Balle and Kasiviswanathan, AISTATS 2019,
  the sampling that matches fixed-size selection under REPLACE_ONE; Poisson sampling, the usual
  DP-FedAvg accounting, would claim an amplification this selection does not have). That is
  only implemented by the RDP accountant, which is therefore the accountant used (RDP converted
  to (epsilon, delta) by the library's conversion). The amplification assumes an observer who
  sees the released models but not which sites took part (the round records and the run's seed
  say it): rounds selecting every eligible site, and ``selection.prefer_fast`` rounds (not
  uniform), are charged as unsampled Gaussian mechanisms.
- Local mode: each site noises its own change, and whoever receives the uploads knows who sent
  them, so there is no amplification: a site spends the composition of a Gaussian mechanism
  (z/2) over the rounds it took part in; the ledger's epsilon is the largest over its sites.
- Both modes in one ledger (settings changed mid-federation): each site spends every central
  round plus its own local ones; every charge keeps the z, selection and population it ran
  with, so composing stays right when settings change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import rdp

from fedstream.privacy import DPMode

# Under replacement of one site's data, a sum of changes clipped to C moves by at most 2C.
REPLACE_ONE_SENSITIVITY = 2.0
NEIGHBOURS = dp_accounting.NeighboringRelation.REPLACE_ONE


@dataclass(frozen=True)
class Charge:
    """One training round's release, as the ledger keeps it: its mode and noise multiplier,
    how many sites were selected among how many eligible, which sites (local mode spends
    theirs), and the ledger's epsilon at ``delta`` once it was charged."""

    run_id: str
    round: int
    mode: DPMode
    noise_multiplier: float
    selected: int
    eligible: int
    sites: tuple[str, ...] = ()
    epsilon: float = 0.0
    delta: float = 0.0
    charged_unix: float = 0.0

    @property
    def sampling(self) -> float:
        """The share of the eligible sites selected (1 when every one was, or when the
        selection is not a uniform draw)."""
        return self.selected / self.eligible if self.eligible else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "round": self.round, "mode": self.mode.value,
            "noise_multiplier": self.noise_multiplier, "selected": self.selected, "eligible": self.eligible,
            "sites": list(self.sites), "epsilon": self.epsilon, "delta": self.delta, "charged_unix": self.charged_unix,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Charge:
        return cls(
            run_id=str(d["run_id"]), round=int(d["round"]), mode=DPMode(d["mode"]),
            noise_multiplier=float(d["noise_multiplier"]), selected=int(d["selected"]), eligible=int(d["eligible"]),
            sites=tuple(d.get("sites", ())), epsilon=float(d.get("epsilon", 0.0)), delta=float(d.get("delta", 0.0)),
            charged_unix=float(d.get("charged_unix", 0.0)),
        )


def round_event(noise_multiplier: float, selected: int, eligible: int) -> dp_accounting.DpEvent:
    """A central round's event: a Gaussian mechanism (noise relative to the REPLACE_ONE
    sensitivity), sampled without replacement when fewer sites than eligible were selected."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY)
    if 0 < selected < eligible:
        return dp_accounting.SampledWithoutReplacementDpEvent(eligible, selected, gaussian)
    return gaussian


def local_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """A site's local release: a Gaussian mechanism on its own clipped change, unsampled."""
    return dp_accounting.GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY)


def _epsilon(events: Counter[tuple[str, float, int, int]], delta: float) -> float:
    accountant = rdp.RdpAccountant(neighboring_relation=NEIGHBOURS)
    for (kind, z, selected, eligible), count in sorted(events.items()):
        event = round_event(z, selected, eligible) if kind == "central" else local_event(z)
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def local_epsilon(noise_multipliers: Iterable[float], delta: float) -> float:
    """The epsilon, at ``delta``, that one site spends by releasing one locally noised change
    per noise multiplier given (``local_event`` each, composed); 0 for none."""
    events = Counter(("local", float(z), 0, 0) for z in noise_multipliers)
    return _epsilon(events, delta) if events else 0.0


def epsilon(charges: list[Charge], delta: float) -> float:
    """The epsilon, at ``delta``, that ``charges`` spent together: central rounds composed, plus
    for each site its local rounds; the largest over the sites. 0 for no charge."""
    central: Counter[tuple[str, float, int, int]] = Counter(
        ("central", c.noise_multiplier, c.selected, c.eligible) for c in charges if c.mode == DPMode.CENTRAL
    )
    per_site: dict[str, Counter[tuple[str, float, int, int]]] = {}
    for c in charges:
        if c.mode == DPMode.LOCAL:
            for site in c.sites:
                per_site.setdefault(site, Counter())[("local", c.noise_multiplier, 0, 0)] += 1
    worst = _epsilon(central, delta) if central else 0.0
    # Sites with the same local history spend the same: compute each history once.
    histories = {tuple(sorted(h.items())) for h in per_site.values()}
    for history in histories:
        worst = max(worst, _epsilon(central + Counter(dict(history)), delta))
    return worst
