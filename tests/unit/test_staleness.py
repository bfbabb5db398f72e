"""Buffered asynchronous runs: the staleness functions, the buffer settings and what a run spec
may ask for in asynchronous mode."""

from __future__ import annotations

import pytest

from fedstream.convert import plan_from_proto, plan_to_proto
from fedstream.errors import InvalidArgument
from fedstream.rounds import RoundKind, RoundPlan
from fedstream.staleness import BufferSpec, StalenessFunction, staleness_factor
from fedstream_cli.runs import _note, run_summary
from fedstream_scheduler.runs import parse_spec


@pytest.mark.parametrize(
    ("function", "s", "a", "b", "want"),
    [
        ("constant", 0, 0.5, 0, 1.0),
        ("constant", 7, 0.5, 0, 1.0),
        ("polynomial", 0, 0.5, 0, 1.0),
        ("polynomial", 3, 0.5, 0, 0.5),  # (1+3)^-0.5
        ("polynomial", 1, 2.0, 0, 0.25),  # (1+1)^-2
        ("polynomial", 5, 0.0, 0, 1.0),
        ("hinge", 2, 1.0, 2, 1.0),  # at the hinge: full weight
        ("hinge", 4, 1.0, 2, 1 / 3),  # 1/(1*(4-2)+1)
        ("hinge", 6, 0.5, 2, 1 / 3),  # 1/(0.5*4+1)
    ],
)
def test_staleness_factor(function, s, a, b, want):
    assert staleness_factor(function, s, a, b) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("function", list(StalenessFunction))
def test_staleness_factor_never_grows_with_staleness(function):
    factors = [staleness_factor(function, s, 0.7, 3) for s in range(50)]
    assert all(0 < f <= 1 for f in factors)
    assert factors == sorted(factors, reverse=True)


def test_negative_staleness_is_refused():
    with pytest.raises(ValueError, match="negative"):
        staleness_factor("constant", -1)


def test_buffer_round_trips_through_dict_and_proto():
    buffer = BufferSpec(4, 3, StalenessFunction.HINGE, a=0.25, b=2.0, max_staleness=6)
    assert BufferSpec.from_dict(buffer.to_dict()) == buffer
    plan = RoundPlan("run-a", 3, RoundKind.TRAIN, "run-a/000002", ("a", "b"), 1, 10.0, buffer=buffer)
    assert RoundPlan.from_dict(plan.to_dict()) == plan
    assert plan_from_proto(plan_to_proto(plan)) == plan
    synchronous = RoundPlan("run-a", 3, RoundKind.TRAIN, "run-a/000002", ("a",), 1, 10.0)
    assert plan_from_proto(plan_to_proto(synchronous)).buffer is None


def test_unknown_staleness_function_is_refused():
    with pytest.raises(InvalidArgument, match="unknown staleness function 'cubic'"):
        BufferSpec.from_dict({"buffer_size": 2, "concurrency": 2, "staleness": {"function": "cubic"}})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"buffer_size": 0, "concurrency": 2}, "asynchronous.buffer_size"),
        ({"buffer_size": 2, "concurrency": 0}, "asynchronous.concurrency"),
        ({"buffer_size": 2}, "asynchronous.concurrency: Field required"),
        ({"buffer_size": 2, "concurrency": 2, "max_staleness": -1}, "asynchronous.max_staleness"),
        ({"buffer_size": 2, "concurrency": 2, "max_staleness": 5000}, "asynchronous.max_staleness"),
        ({"buffer_size": 2, "concurrency": 2, "staleness": {"function": "cubic"}}, "asynchronous.staleness.function"),
        ({"buffer_size": 2, "concurrency": 2, "staleness": {"a": -1}}, "asynchronous.staleness.a"),
        ({"buffer_size": 2, "concurrency": 2, "staleness": {"b": float("nan")}}, "asynchronous.staleness.b"),
        ({"buffer_size": 2, "concurrency": 2, "speed": 1}, "asynchronous.speed"),
    ],
)
def test_bad_asynchronous_settings_are_refused(fields, message):
    with pytest.raises(InvalidArgument, match=f"invalid run spec: {message}"):
        parse_spec({"task": "digits", "asynchronous": fields})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"strategy": {"name": "median"}}, "strategy 'median' combines every update at once"),
        ({"strategy": {"name": "trimmed-mean"}}, "strategy 'trimmed-mean' combines every update at once"),
        ({"strategy": {"name": "multi-krum"}}, "strategy 'multi-krum' combines every update at once"),
        ({"strategy": {"name": "fedpav"}}, "partial averaging or distillation"),
        ({"training": {"compression": "int8"}}, "training.compression must be none"),
        ({"evaluate_only": True, "initial_version": "r/000000"}, "evaluate_only does not apply"),
        ({"evaluate_every": 2}, "evaluate_every must be 0"),
        ({"min_agents": 3, "target_updates": 2}, "target_updates and selection.prefer_fast are for synchronous"),
        ({"selection": {"prefer_fast": True}}, "target_updates and selection.prefer_fast are for synchronous"),
    ],
)
def test_what_asynchronous_runs_refuse(extra, message):
    with pytest.raises(InvalidArgument, match=f"asynchronous runs .*{message}"):
        parse_spec({"task": "digits", "asynchronous": {"buffer_size": 2, "concurrency": 2}, **extra})


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_asynchronous_runs_take_linear_strategies(strategy):
    spec = parse_spec({
        "task": "digits", "rounds": 5, "strategy": {"name": strategy},
        "asynchronous": {"buffer_size": 2, "concurrency": 3, "staleness": {"function": "hinge", "a": 1, "b": 2}},
    })
    assert spec.asynchronous is not None
    assert spec.asynchronous.buffer() == BufferSpec(2, 3, StalenessFunction.HINGE, 1.0, 2.0, 10)
    assert parse_spec({"task": "digits"}).asynchronous is None


def test_the_cli_shows_an_asynchronous_run_by_version():
    def rnd(n, state, updates):
        return {"round": n, "kind": "train", "state": state, "updates": updates, "participants": ["a", "b", "c"],
                "bytes_received": 0, "update_metrics": {"staleness": 0.5}, "metrics": {}, "duration_s": 1.0}

    run = {"run_id": "r", "state": "running", "reason": "", "rounds_committed": 1, "latest_version": "r/000001",
           "spec": {"rounds": 3, "asynchronous": {"buffer_size": 4}}, "rounds": [rnd(1, "committed", 4), rnd(2, "training", 1)]}

    assert _note(run).startswith("version 2 training: 1/4 updates buffered")
    lines = run_summary(run)
    assert "1 versions (asynchronous) committed" in lines[0]
    assert "staleness 0.5000" in lines[1]

