"""The agent reads each assignment into the round vocabulary once, at its stream's edge."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from fedstream import convert
from fedstream.rounds import Assignment, RoundKind, TrainingConfig
from fedstream_agent.agent import Agent
from fedstream_agent.settings import AgentSettings, AgentTlsSettings


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> tuple[Agent, list[Assignment]]:
    """An agent that connects nowhere and records what it is asked to do instead of doing it."""
    agent = Agent(AgentSettings(agent_id="edge", device="cpu", tls=AgentTlsSettings(insecure_plaintext=True)))
    done: list[Assignment] = []
    monkeypatch.setattr(agent, "_handle", done.append)
    return agent, done


def rounds_counted(kind: str, outcome: str) -> float:
    labels = {"task": "digits", "kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("fedstream_agent_rounds_total", labels) or 0.0


def test_an_assignment_is_handled_as_a_domain_assignment_and_counted_by_its_kind(agent) -> None:
    agent, done = agent
    sent = Assignment("run-edge", 2, RoundKind.EVALUATE, "digits", "run-edge/000001", "agg:1", "agg:1",
                      TrainingConfig(seed=3), 1234.5)
    before = rounds_counted("evaluate", "done")

    agent._receive(convert.assignment_to_proto(sent).assignment)
    agent._receive(convert.assignment_to_proto(sent).assignment)  # repeated on a reconnect: done once

    assert done == [sent]
    assert rounds_counted("evaluate", "done") == before + 1


def test_an_assignment_of_an_unknown_kind_is_logged_and_skipped(agent, caplog) -> None:
    agent, done = agent
    msg = convert.assignment_to_proto(
        Assignment("run-edge", 3, RoundKind.TRAIN, "digits", "", "agg:1", "agg:1", TrainingConfig(), 0.0)
    ).assignment
    msg.kind = 99

    with caplog.at_level(logging.ERROR, logger="fedstream_agent.agent"):
        agent._receive(msg)

    assert done == [] and agent.rounds_done == 0
    assert "round 3 of run-edge skipped: unknown round kind 99" in caplog.text
