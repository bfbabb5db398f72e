"""The agent's slowdown setting: training stretched to a multiple of its time, ended early
when the round's work is over."""

from __future__ import annotations

import itertools
import threading

import pytest

from fedstream_agent.pacing import stretch
from fedstream_agent.settings import AgentSettings


class Over(Exception):
    pass


def ticking(step: float):
    """A clock that moves ``step`` seconds each time it is read."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_the_wait_is_the_factor_minus_one_times_the_training_and_checks_as_it_goes():
    checks: list[int] = []

    waited = stretch(4.0, 3.0, lambda: checks.append(1), threading.Event(), clock=ticking(1.0))

    # 8 s more: the clock is read before each check, so the loop checks about once a second.
    assert waited >= 8.0 and len(checks) >= 4


def test_the_wait_ends_when_the_check_raises():
    calls = itertools.count()

    def check() -> None:
        if next(calls) == 2:
            raise Over

    with pytest.raises(Over):
        stretch(100.0, 20.0, check, threading.Event(), clock=ticking(1.0))


def test_no_slowdown_waits_nothing_and_a_set_stop_returns_at_once():
    stop = threading.Event()
    assert stretch(5.0, 1.0, lambda: None, stop, clock=ticking(0.0)) == 0.0
    stop.set()
    assert stretch(5.0, 10.0, lambda: None, stop, clock=ticking(0.001)) < 1.0


@pytest.mark.parametrize("value", ["0.5", "nan", "inf", "-2"])
def test_a_slowdown_below_one_or_not_finite_is_refused(monkeypatch, value):
    monkeypatch.setenv("FEDSTREAM_AGENT_SLOWDOWN", value)
    with pytest.raises(ValueError, match="slowdown"):
        AgentSettings()


def test_the_slowdown_is_read_from_its_variable(monkeypatch):
    monkeypatch.setenv("FEDSTREAM_AGENT_SLOWDOWN", "20")
    assert AgentSettings().slowdown == 20.0
