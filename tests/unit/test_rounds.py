"""The round vocabulary: transitions, records and their protobuf forms."""

from __future__ import annotations

import pytest

from fedstream import convert
from fedstream.errors import InvalidArgument
from fedstream.rounds import (
    ROUND_TRANSITIONS,
    Assignment,
    RoundKind,
    RoundPlan,
    RoundSnapshot,
    RoundState,
    RunState,
    TrainingConfig,
    UpdateReport,
    canonical_params,
    combine_metrics,
)


def test_every_kind_and_state_has_a_wire_form_and_back() -> None:
    for kind in RoundKind:
        assert convert.kind_from_proto(convert.kind_to_proto(kind)) is kind
    for state in RoundState:
        assert convert.state_from_proto(convert.state_to_proto(state)) is state
    for run_state in RunState:
        assert convert.run_state_from_proto(convert.run_state_to_proto(run_state)) is run_state


@pytest.mark.parametrize("convert_back", [convert.kind_from_proto, convert.state_from_proto, convert.run_state_from_proto])
def test_unspecified_and_unknown_wire_values_are_refused(convert_back) -> None:
    for value in (0, 99):
        with pytest.raises(InvalidArgument):
            convert_back(value)


def test_transitions_only_move_forward_and_terminal_states_are_final() -> None:
    assert RoundState.OPEN.can_move_to(RoundState.TRAINING)
    assert not RoundState.TRAINING.can_move_to(RoundState.OPEN)
    assert not RoundState.OPEN.can_move_to(RoundState.COMMITTED)
    for state in RoundState:
        assert state.terminal == (not ROUND_TRANSITIONS[state])
        if not state.terminal:
            assert state.can_move_to(RoundState.FAILED)


def test_a_plan_round_trips_through_its_stored_and_wire_forms() -> None:
    plan = RoundPlan(
        "run-1", 3, RoundKind.TRAIN, "run-1/000002", ("a", "b"), 1, 1234.5,
        strategy="fedprox", strategy_params=canonical_params({"mu": 0.5}), compression="int8",
        partial=True, task="digits", distill=False, target_updates=2,
    )
    assert RoundPlan.from_dict(plan.to_dict()) == plan
    assert convert.plan_from_proto(convert.plan_to_proto(plan)) == plan


@pytest.mark.parametrize("kind", list(RoundKind))
def test_an_assignment_round_trips_through_its_wire_form(kind: RoundKind) -> None:
    training = TrainingConfig(local_epochs=3, batch_size=16, learning_rate=0.125, seed=7, no_op=True,
                              compression="int8", proximal_mu=0.25, shared_only=True)
    assignment = Assignment("run-1", 4, kind, "digits", "run-1/000003", "agg:1", "agg:2", training, 1234.5,
                            chunk_bytes=65536, participants=("site-a", "site-b"))
    event = convert.assignment_to_proto(assignment)
    assert convert.assignment_from_proto(event.assignment) == assignment
    assert convert.training_from_proto(convert.training_to_proto(training)) == training


def test_an_assignment_of_an_unknown_kind_is_refused_and_empty_compression_reads_none() -> None:
    assignment = Assignment("run-1", 1, RoundKind.TRAIN, "digits", "", "agg:1", "agg:1", TrainingConfig(), 0.0)
    event = convert.assignment_to_proto(assignment)
    event.assignment.training.compression = ""
    assert convert.assignment_from_proto(event.assignment).training.compression == "none"
    for value in (0, 99):
        event.assignment.kind = value
        with pytest.raises(InvalidArgument, match=f"unknown round kind {value}"):
            convert.assignment_from_proto(event.assignment)


def test_a_report_round_trips_and_the_wire_form_weighs_its_examples() -> None:
    report = UpdateReport("a", 10, {"loss": 0.5}, 400, weight=2.5)
    assert UpdateReport.from_dict(report.to_dict()) == report
    back = convert.report_from_proto(convert.report_to_proto(report))
    assert (back.agent_id, back.num_examples, back.metrics, back.bytes_received, back.weight) == ("a", 10, {"loss": 0.5}, 400, 10.0)
    snap = RoundSnapshot("run-1", 1, RoundState.COMMITTED, [report], ["b"], "run-1/000001", "", {"acc": 1.0})
    again = convert.snapshot_from_proto(convert.snapshot_to_proto(snap))
    assert again.state is RoundState.COMMITTED and again.stragglers == ["b"] and again.reports[0].agent_id == "a"


def test_combined_metrics_weigh_each_report_by_its_examples() -> None:
    reports = [UpdateReport("a", 1, {"acc": 1.0}), UpdateReport("b", 3, {"acc": 0.0, "loss": 2.0})]
    assert combine_metrics(reports) == {"acc": 0.25, "loss": 2.0}
