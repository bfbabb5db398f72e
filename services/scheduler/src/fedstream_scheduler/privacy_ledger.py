"""Privacy budgets: charging each differentially private training round to its federation's
ledger (a run without a federation keeps one of its own) before the round opens, refusing the
round that would take the ledger's epsilon past the budget, and reporting what was spent.

A round is charged when it is opened, never refunded: the aggregator may release it (a round
that fails later may still have let an update or a noised sum be seen), so a failed or
cancelled round stays counted. Charging is idempotent per run and round, so a round opened
again after a restart is charged once."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from fedstream.accounting import Charge, epsilon
from fedstream.errors import FailedPrecondition
from fedstream.privacy import DPMode, PrivacySpec
from fedstream.state import PrivacyLedgerRecord, RunRecord, StateStore
from fedstream_scheduler import metrics as m


class BudgetSpent(FailedPrecondition):
    """A training round that would take its ledger's epsilon past the budget."""


def ledger_of(run: RunRecord) -> str:
    """The ledger a run spends on: its federation's, or its own when it has none."""
    return run.federation or f"run:{run.run_id}"


def spent_message(eps: float, privacy: PrivacySpec) -> str:
    return (f"privacy budget spent: epsilon would reach {eps:.4g} > budget {privacy.epsilon_budget:g} "
            f"at delta {privacy.delta:g}")


class PrivacyLedger:
    """The tenant's privacy ledgers in the state store."""

    def __init__(self, state: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def charges(self, ledger_id: str) -> list[Charge]:
        """The ledger's charges, oldest first."""
        return [Charge.from_dict(d) for d in self.state.get_privacy_ledger(ledger_id).charges]

    def epsilon_after(self, ledger_id: str, privacy: PrivacySpec, selected: int, eligible: int) -> float:
        """The ledger's epsilon at ``privacy.delta`` were one more round of these settings charged
        (in local mode, to every site seen so far: any of them may be selected)."""
        charges = self.charges(ledger_id)
        sites = tuple({s for c in charges for s in c.sites} | {""}) if privacy.mode == DPMode.LOCAL else ()
        new = Charge("", 0, privacy.mode, privacy.noise_multiplier, selected, eligible, sites)
        return epsilon([*charges, new], privacy.delta)

    def check_room(self, ledger_id: str, privacy: PrivacySpec, selected: int, eligible: int) -> None:
        """Raises BudgetSpent (naming the budget) when not even one round of these settings fits."""
        eps = self.epsilon_after(ledger_id, privacy, selected, eligible)
        if not eps <= privacy.epsilon_budget:  # NaN refused too
            raise BudgetSpent(f"{ledger_id}: {spent_message(eps, privacy)}")

    def charge(self, run: RunRecord, round_no: int, privacy: PrivacySpec, participants: list[str],
               eligible: int) -> Charge:
        """Charges a training round of ``run`` selecting ``participants`` among ``eligible``
        sites, atomically, and returns the charge (the one made before, when this round was
        charged already). Raises BudgetSpent, charging nothing, when the ledger's epsilon at
        ``privacy.delta`` would pass ``privacy.epsilon_budget``."""
        ledger_id = ledger_of(run)
        sites = tuple(participants) if privacy.mode == DPMode.LOCAL else ()
        new = Charge(run.run_id, round_no, privacy.mode, privacy.noise_multiplier, len(participants),
                     max(eligible, len(participants)), sites, delta=privacy.delta, charged_unix=self.clock())

        def add(rec: PrivacyLedgerRecord) -> PrivacyLedgerRecord:
            charges = [Charge.from_dict(d) for d in rec.charges]
            if any(c.run_id == run.run_id and c.round == round_no for c in charges):
                return rec
            eps = epsilon([*charges, new], privacy.delta)
            if not eps <= privacy.epsilon_budget:  # NaN refused too
                raise BudgetSpent(spent_message(eps, privacy))
            return dataclasses.replace(rec, charges=[*rec.charges, dataclasses.replace(new, epsilon=eps).to_dict()])

        rec = self.state.update_privacy_ledger(ledger_id, add)
        charged = next(Charge.from_dict(d) for d in rec.charges
                       if d["run_id"] == run.run_id and d["round"] == round_no)
        if run.federation:
            m.PRIVACY_EPSILON_SPENT.labels(self.state.tenant, run.federation).set(charged.epsilon)
            m.PRIVACY_EPSILON_BUDGET.labels(self.state.tenant, run.federation).set(privacy.epsilon_budget)
        return charged

    def report(self, ledger_id: str, privacy: PrivacySpec | None) -> dict[str, Any]:
        """What the ledger has spent: at ``privacy``'s delta and against its budget when given
        (the federation's settings now), else at the delta of the last charge."""
        charges = self.charges(ledger_id)
        delta = privacy.delta if privacy else (charges[-1].delta if charges else 0.0)
        spent = epsilon(charges, delta) if charges and delta else 0.0
        budget = privacy.epsilon_budget if privacy else None
        return {
            "ledger_id": ledger_id,
            "mode": privacy.mode.value if privacy else None,
            "budget": budget,
            "delta": delta or None,
            "spent": spent,
            "remaining": max(0.0, budget - spent) if budget is not None else None,
            "charges": [{**c.to_dict(), "sampling": c.sampling, "sites": len(c.sites) or None} for c in charges],
        }


def round_epsilons(state: StateStore, run: RunRecord) -> dict[int, float]:
    """The ledger's epsilon after each of ``run``'s charged rounds, by round (empty for a run
    that never spent any)."""
    if not run.spec.get("privacy"):
        return {}
    return {c.round: c.epsilon for c in PrivacyLedger(state).charges(ledger_of(run)) if c.run_id == run.run_id}


def federation_privacy(state: StateStore, federation_id: str) -> dict[str, Any]:
    """The federation's privacy report (``PrivacyLedger.report``) against its settings now;
    raises FederationNotFound."""
    fed = state.get_federation(federation_id)
    settings = fed.spec.get("privacy")
    privacy = PrivacySpec.from_dict(settings) if settings else None
    report = PrivacyLedger(state).report(federation_id, privacy)
    if privacy is not None:
        m.PRIVACY_EPSILON_SPENT.labels(state.tenant, federation_id).set(report["spent"])
        m.PRIVACY_EPSILON_BUDGET.labels(state.tenant, federation_id).set(privacy.epsilon_budget)
    return report
