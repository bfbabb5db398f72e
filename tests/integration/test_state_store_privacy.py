"""Contract tests of the state store's privacy ledgers (the documents role), run against every
backend: an empty ledger for an unknown id, charges read back in order, a refused charge changes
nothing, and concurrent charges all land."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from fedstream.errors import FailedPrecondition
from fedstream.state import PrivacyLedgerRecord, StateStore


def charge(n: int) -> dict[str, object]:
    return {"run_id": "run-a", "round": n, "mode": "central", "noise_multiplier": 1.5, "selected": 2,
            "eligible": 4, "sites": [], "epsilon": 0.5 * n, "delta": 1e-5, "charged_unix": float(n)}


def append(n: int):
    return lambda rec: dataclasses.replace(rec, charges=[*rec.charges, charge(n)])


def test_an_unknown_ledger_is_empty_and_charges_read_back_in_order(state_store: StateStore):
    assert state_store.get_privacy_ledger("fed") == PrivacyLedgerRecord("fed")

    state_store.update_privacy_ledger("fed", append(1))
    state_store.update_privacy_ledger("fed", append(2))

    assert state_store.get_privacy_ledger("fed") == PrivacyLedgerRecord("fed", [charge(1), charge(2)])
    assert state_store.get_privacy_ledger("run:run-b") == PrivacyLedgerRecord("run:run-b")


def test_a_refused_charge_changes_nothing(state_store: StateStore):
    state_store.update_privacy_ledger("fed", append(1))

    def refuse(rec: PrivacyLedgerRecord) -> PrivacyLedgerRecord:
        raise FailedPrecondition("privacy budget spent")

    with pytest.raises(FailedPrecondition):
        state_store.update_privacy_ledger("fed", refuse)
    assert state_store.get_privacy_ledger("fed").charges == [charge(1)]


def test_concurrent_charges_all_land(state_store: StateStore):
    threads = [threading.Thread(target=state_store.update_privacy_ledger, args=("fed", append(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(c["round"] for c in state_store.get_privacy_ledger("fed").charges) == list(range(8))
