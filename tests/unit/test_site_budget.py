"""A site's own privacy budget (fedstream_agent.budget): the ledger of its local releases,
written whole or not at all, refused when unreadable rather than started afresh; the epsilon
of its releases by the scheduler's arithmetic; which assignments it declines."""

from __future__ import annotations

import json
import logging
import os

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from fedstream.accounting import Charge, epsilon, local_epsilon
from fedstream.exitcodes import ExitCode
from fedstream.privacy import DPMode, PrivacySpec
from fedstream.rounds import Assignment, RoundKind, TrainingConfig
from fedstream.startup import StartupError
from fedstream_agent.budget import LEDGER_FILE, Release, SiteBudget, SiteLedger, is_local_release
from fedstream_agent.settings import AgentPrivacySettings, AgentSettings

Z = 4.0
# At delta 1e-5 one, two and three releases of noise multiplier 4 spend 2.17, 3.19 and 4.01.
TWO_RELEASES = 3.5


def assignment(round_: int, mode: DPMode | None = DPMode.LOCAL, kind: RoundKind = RoundKind.TRAIN,
               no_op: bool = False, run: str = "run-a") -> Assignment:
    privacy = PrivacySpec(mode, 1.0, Z, 100.0, 1e-5) if mode else None
    return Assignment(run, round_, kind, "digits", f"{run}/{round_ - 1:06d}", "e", "e",
                      TrainingConfig(privacy=privacy, no_op=no_op), 0.0)


def declined(kind: str = "train") -> float:
    return REGISTRY.get_sample_value(
        "fedstream_agent_rounds_total", {"task": "digits", "kind": kind, "outcome": "declined"}) or 0.0


def test_releases_are_recorded_with_the_schedulers_epsilon_and_read_back(tmp_path):
    path = tmp_path / LEDGER_FILE
    budget = SiteBudget(AgentPrivacySettings(), path, clock=lambda: 1000.0)

    budget.release(assignment(1))
    budget.release(assignment(2))
    again = SiteLedger(path)

    assert again.releases == budget.ledger.releases
    assert [(r.run_id, r.round, r.noise_multiplier, r.delta, r.released_unix) for r in again.releases] == [
        ("run-a", 1, Z, 1e-5, 1000.0), ("run-a", 2, Z, 1e-5, 1000.0)]
    # The site's epsilon is what the federation's ledger would charge one site for the same rounds.
    charges = [Charge("run-a", n, DPMode.LOCAL, Z, 1, 1, ("site",)) for n in (1, 2)]
    assert again.releases[-1].epsilon == pytest.approx(epsilon(charges, 1e-5))
    assert again.releases[0].epsilon == pytest.approx(local_epsilon([Z], 1e-5))
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [LEDGER_FILE]  # no temporary file left


def test_only_local_training_releases_count():
    budget = SiteBudget(AgentPrivacySettings(max_epsilon=0.5), None)
    others = [assignment(1, DPMode.CENTRAL), assignment(2, None), assignment(3, kind=RoundKind.EVALUATE),
              assignment(4, no_op=True), assignment(0, kind=RoundKind.INIT)]

    for a in others:
        assert budget.admits(a) and not is_local_release(a)
        budget.release(a)

    assert budget.ledger.releases == []
    assert not budget.admits(assignment(5))  # one local release of z=4 spends 2.17 > 0.5


def test_a_limit_allowing_two_releases_declines_the_third_with_one_warning(tmp_path, caplog):
    budget = SiteBudget(AgentPrivacySettings(max_epsilon=TWO_RELEASES), tmp_path / LEDGER_FILE)
    before = declined()

    for n in (1, 2):
        assert budget.admits(assignment(n))
        budget.release(assignment(n))
    with caplog.at_level(logging.WARNING, logger="fedstream_agent.budget"):
        admitted = budget.admits(assignment(3))

    assert not admitted
    assert len(budget.ledger.releases) == 2  # declining records nothing
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "round 3 of run-a declined" in warning.message
    assert "privacy.max_epsilon=3.5" in warning.message and "4.011" in warning.message
    assert declined() == before + 1
    assert budget.admits(assignment(4, DPMode.CENTRAL))  # central rounds are not the site's to count


def test_the_limit_holds_across_a_restart(tmp_path):
    path = tmp_path / LEDGER_FILE
    first = SiteBudget(AgentPrivacySettings(max_epsilon=TWO_RELEASES), path)
    for n in (1, 2):
        first.release(assignment(n, run="run-a"))

    restarted = SiteBudget(AgentPrivacySettings(max_epsilon=TWO_RELEASES), path)

    assert not restarted.admits(assignment(1, run="run-b"))  # another run spends the same site


def test_a_failed_write_keeps_the_previous_ledger_whole(tmp_path, monkeypatch):
    path = tmp_path / LEDGER_FILE
    budget = SiteBudget(AgentPrivacySettings(), path)
    budget.release(assignment(1))
    before = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        budget.release(assignment(2))

    assert path.read_bytes() == before
    assert len(budget.ledger.releases) == 1  # what is in memory is what is on disk
    assert len(SiteLedger(path).releases) == 1


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "Expecting property name"),
        ('{"version": 2, "releases": []}', "not a version 1 privacy ledger"),
        ('{"version": 1, "releases": {}}', "not a version 1 privacy ledger"),
        ('[]', "not a version 1 privacy ledger"),
        ('{"version": 1, "releases": [{"run_id": "r", "round": 1}]}', "a release lacks 'noise_multiplier'"),
        ('{"version": 1, "releases": [7]}', "a release is not an object"),
        ('{"version": 1, "releases": [{"run_id": "r", "round": 1, "noise_multiplier": -1, "epsilon": 0, '
         '"delta": 1e-5, "released_unix": 0}]}', "noise_multiplier must be a positive number"),
        ('{"version": 1, "releases": [{"run_id": "r", "round": "one", "noise_multiplier": 1, "epsilon": 0, '
         '"delta": 1e-5, "released_unix": 0}]}', "fields are not numbers"),
    ],
)
def test_an_unreadable_ledger_stops_the_agent_naming_the_file(tmp_path, text, why):
    path = tmp_path / LEDGER_FILE
    path.write_text(text)

    with pytest.raises(StartupError) as raised:
        SiteLedger(path)

    line = raised.value.line("FEDSTREAM_AGENT_", environ={})
    assert f"the privacy ledger {path} cannot be read" in line and why in line
    assert line.startswith("FEDSTREAM_AGENT_TLS__IDENTITY_DIR=")
    assert "restore it from a backup" in line
    assert raised.value.code == ExitCode.BAD_DATA
    assert path.read_text() == text  # never reset


def test_the_ledger_is_kept_beside_the_identity_or_for_a_limit(tmp_path):
    def settings(limit: float) -> AgentSettings:
        return AgentSettings.model_validate({"tls": {"identity_dir": tmp_path, "insecure_plaintext": True},
                                             "privacy": {"max_epsilon": limit}})

    assert SiteBudget.of(settings(0), has_identity=False).ledger.path is None
    assert SiteBudget.of(settings(0), has_identity=True).ledger.path == tmp_path / LEDGER_FILE
    assert SiteBudget.of(settings(2.0), has_identity=False).ledger.path == tmp_path / LEDGER_FILE


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDSTREAM_AGENT_PRIVACY__MAX_EPSILON", "8")
    monkeypatch.setenv("FEDSTREAM_AGENT_PRIVACY__DELTA", "1e-6")

    privacy = AgentSettings().privacy

    assert (privacy.max_epsilon, privacy.delta) == (8.0, 1e-6)
    assert AgentPrivacySettings().model_dump() == {"max_epsilon": 0.0, "delta": 1e-5}
    for bad in ({"max_epsilon": -1}, {"max_epsilon": float("inf")}, {"delta": 0}, {"delta": 1}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            AgentPrivacySettings.model_validate(bad)


def test_a_release_reads_back():
    release = Release("run-a", 3, 1.5, 2.25, 1e-5, 10.0)

    assert Release.from_dict(release.to_dict()) == release
