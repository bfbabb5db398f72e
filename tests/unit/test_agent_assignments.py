"""The agent reads each assignment into the round vocabulary once, at its stream's edge."""

from __future__ import annotations

import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from fedstream import convert
from fedstream.grpcutil import ERROR_CODE_KEY
from fedstream.privacy import SecureAggregationSpec
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


class Refused(grpc.RpcError):
    """A refusal as a gRPC call raises it: a status, its message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, error_code: str = "") -> None:
        self._code, self._details, self._error_code = code, details, error_code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ERROR_CODE_KEY, self._error_code),) if self._error_code else ()


LATE = "round 4 of run 'run-edge' closed with its 2 updates and is not accepting updates: this one came late and is not counted"


@pytest.mark.parametrize("error_code", ["round_closed", ""], ids=["with-code", "ended-mid-stream"])
def test_an_upload_refused_as_late_ends_the_agents_work_as_not_needed(agent, monkeypatch, caplog, error_code) -> None:
    agent, _ = agent
    sent = Assignment(f"run-edge-{error_code}", 4, RoundKind.TRAIN, "digits", "b", "agg:1", "agg:1", TrainingConfig(), 0.0)

    def refused(a: Assignment) -> None:
        raise Refused(grpc.StatusCode.FAILED_PRECONDITION, LATE, error_code)

    monkeypatch.setattr(agent, "_handle", refused)
    before = rounds_counted("train", "not_needed")
    with caplog.at_level(logging.INFO, logger="fedstream_agent.agent"):
        agent.handle(sent)

    assert rounds_counted("train", "not_needed") == before + 1
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "closed without this agent's update; its work was not needed" in caplog.text


def test_a_heartbeat_saying_the_round_closed_stops_the_work_with_one_info_line(agent, monkeypatch, caplog) -> None:
    agent, _ = agent
    sent = Assignment("run-edge", 5, RoundKind.TRAIN, "digits", "b", "agg:1", "agg:1", TrainingConfig(), 0.0)

    def training(a: Assignment) -> None:
        # What the heartbeat thread records from a reply with round_closed, then the next batch's check.
        agent._closed[(a.run_id, a.round)] = "round 5 of run 'run-edge' closed with its 3 updates"
        agent._check_cancelled(a)

    monkeypatch.setattr(agent, "_handle", training)
    with caplog.at_level(logging.INFO, logger="fedstream_agent.agent"):
        agent.handle(sent)

    assert [r.getMessage() for r in caplog.records] == [
        "round 5 of run 'run-edge' closed with its 3 updates; this agent's work was not needed"
    ]
    assert agent._closed == {} and agent.rounds_done == 0


def test_a_plaintext_agent_takes_no_part_in_secure_aggregation_with_one_error(monkeypatch, caplog) -> None:
    agent = Agent(AgentSettings(agent_id="edge", device="cpu", tls=AgentTlsSettings(insecure_plaintext=True)))
    monkeypatch.setattr(agent, "_task", lambda name: (None, None))
    monkeypatch.setattr(agent, "_channel", lambda endpoint: pytest.fail("dialed the aggregator"))
    training = TrainingConfig(upload_delta=True, secure_aggregation=SecureAggregationSpec())
    sent = Assignment("run-edge", 6, RoundKind.TRAIN, "digits", "b", "agg:1", "agg:1", training, 0.0,
                      participants=("edge", "other"))
    before = rounds_counted("train", "abandoned")
    caplog.clear()  # the plaintext warning at start

    with caplog.at_level(logging.INFO, logger="fedstream_agent.agent"):
        agent.handle(sent)

    assert rounds_counted("train", "abandoned") == before + 1 and agent.rounds_done == 0
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "round 6 of run-edge abandoned: secure aggregation needs this agent's certificate" in caplog.text
    assert "tls.insecure_plaintext is set: not taking part" in caplog.text
