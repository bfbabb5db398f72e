"""The `fedstream` command's conventions: --version, one set of admin-API options on every REST
command, run-spec flags whose defaults are the API's, the same spec over REST and gRPC."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_cli import build_parser
from fedstream_cli.audit import _row as audit_row
from fedstream_cli.dev_grpc import RoundPrinter, run_spec
from fedstream_cli.plot import _draw, is_asynchronous, metric_series, version_timeline
from fedstream_cli.runs import not_needed, run_summary, tell_not_needed
from fedstream_cli.runspec import FLAGS, spec_from_args
from fedstream_scheduler.models import RunSpec

REST_GROUPS = ("federations", "runs", "models", "agents", "enrollment-tokens", "tokens", "releases", "channels",
               "run-requests")


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    return {k: v for name, p in subs[0].choices.items() for k, v in leaves(p, (*path, name)).items()}


def test_version_prints_the_distribution_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])

    assert done.value.code == 0
    assert capsys.readouterr().out == f"fedstream {version('fedstream-cli')}\n"


def test_every_rest_command_takes_the_same_api_options():
    commands = {path: p for path, p in leaves(build_parser()).items() if path[0] in (*REST_GROUPS, "plot")}

    assert len(commands) >= 20
    for path, p in commands.items():
        options = {o for a in p._actions for o in a.option_strings}
        assert {"--api", "--token", "--format"} <= options, path
        if "--output" in options:
            assert "-o" in options, path


def test_run_spec_flags_default_to_the_api_defaults():
    api = RunSpec(task="digits").model_dump()

    for f in FLAGS:
        if f.default is None:
            continue
        node = api
        *parents, leaf = f.field.split(".")
        for p in parents:
            node = node[p]
        assert node[leaf] == f.default, f.flag


def test_rest_and_grpc_starts_send_the_same_spec():
    flags = ["--task", "digits", "--rounds", "3", "--strategy", "fedprox", "--strategy-param", "mu=0.01",
             "--epochs", "2", "--compression", "int8", "--evaluate-every", "1"]
    parser = build_parser()

    rest = spec_from_args(parser.parse_args(["federations", "create", "f", *flags]))
    grpc = spec_from_args(parser.parse_args(["grpc", "run-start", *flags]))

    assert rest == grpc
    assert RunSpec(**rest).strategy.params == {"mu": 0.01}
    assert run_spec(rest).training.compression == "int8"


def test_update_sends_only_the_flags_given():
    args = build_parser().parse_args(["federations", "update", "f", "--epochs", "3"])

    assert spec_from_args(args) == {"training": {"local_epochs": 3}}


def test_over_selection_flags_reach_both_front_ends():
    flags = ["--task", "digits", "--min-agents", "4", "--target-updates", "2", "--prefer-fast",
             "--fairness-floor", "0.25"]
    parser = build_parser()

    rest = spec_from_args(parser.parse_args(["federations", "create", "f", *flags]))
    grpc = run_spec(spec_from_args(parser.parse_args(["grpc", "run-start", *flags])))
    update = spec_from_args(parser.parse_args(["federations", "update", "f", "--no-prefer-fast"]))

    assert rest["target_updates"] == 2 and rest["selection"] == {"prefer_fast": True, "fairness_floor": 0.25}
    spec = RunSpec(**rest)
    assert (spec.target_updates, spec.selection.prefer_fast, spec.selection.fairness_floor) == (2, True, 0.25)
    assert grpc.target_updates == 2 and grpc.selection.prefer_fast and grpc.selection.fairness_floor == 0.25
    assert update == {"selection": {"prefer_fast": False}}


def test_every_command_and_every_option_has_help_text():
    def undocumented(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {c.dest} (command)" for c in action._choices_actions if not c.help]
                for name, sub in action.choices.items():
                    missing += undocumented(sub, (*path, name))
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
        return missing

    parser = build_parser()

    assert len(leaves(parser)) >= 30
    assert undocumented(parser, ("fedstream",)) == []


def _round(state: int, reports: int, participants: int = 3) -> scheduler_pb2.RoundInfo:
    return scheduler_pb2.RoundInfo(
        round=1, kind=round_pb2.ROUND_KIND_TRAIN, state=state, participants=[f"site-{i}" for i in range(participants)],
        reports=[round_pb2.UpdateReport(agent_id=f"site-{i}", num_examples=10) for i in range(reports)],
        version="r/000001" if state == round_pb2.ROUND_STATE_COMMITTED else "", started_unix=1.0, finished_unix=2.0)


def test_progress_shows_every_update_before_the_round_commits():
    lines: list[str] = []
    printer = RoundPrinter(lines.append, total_rounds=1)
    snapshots = [_round(round_pb2.ROUND_STATE_TRAINING, 0), _round(round_pb2.ROUND_STATE_TRAINING, 1),
                 _round(round_pb2.ROUND_STATE_COMMITTED, 3)]  # reports come batched: 2 and 3 arrive with the commit

    for r in snapshots:
        printer.update(scheduler_pb2.Run(run_id="r", rounds=[r]))
    printer.update(scheduler_pb2.Run(run_id="r", rounds=[snapshots[-1]]))  # the same again prints nothing

    assert lines[0] == "round 1/1: training on site-0, site-1, site-2"
    assert lines[1:3] == ["round 1/1: 1/3 updates in", "round 1/1: 3/3 updates in"]
    assert lines[3].startswith("round 1/1: committed r/000001 in 1.0 s")
    assert len(lines) == 4


def test_progress_of_a_round_seen_only_at_its_end_still_counts_its_updates():
    lines: list[str] = []

    RoundPrinter(lines.append).update(scheduler_pb2.Run(run_id="r", rounds=[_round(round_pb2.ROUND_STATE_FAILED, 1)]))

    assert lines[0] == "round 1: 1/3 updates in" and lines[1].startswith("round 1: failed")


def test_plot_separates_training_metrics_from_evaluation_metrics():
    def rnd(n: int, kind: str, update: dict[str, float], metrics: dict[str, float], base: str = "") -> dict:
        return {"round": n, "kind": kind, "update_metrics": update, "metrics": metrics, "base_version": base}

    rounds = [rnd(0, "init", {}, {}),
              rnd(1, "train", {"train_loss": 0.9, "train_seconds": 3.0, "examples_seen": 300.0}, {}),
              rnd(2, "evaluate", {"accuracy": 0.5, "eval_seconds": 1.0}, {"accuracy": 0.5}, "r/000001"),
              rnd(3, "train", {"train_loss": 0.4}, {"distill_mse": 0.1}),
              rnd(4, "evaluate", {"accuracy": 0.8}, {"accuracy": 0.8}, "r/000003")]

    training, evaluation = metric_series(rounds)

    assert training == {"train_loss": [(1, 0.9), (3, 0.4)], "server distill_mse": [(3, 0.1)]}
    assert evaluation == {"accuracy": [(1, 0.5), (3, 0.8)]}  # at the round whose version was evaluated


def test_plot_shows_an_asynchronous_run_by_version_with_commit_times_and_staleness(tmp_path):
    def version(n: int, started: float, finished: float, staleness: float) -> dict:
        return {"round": n, "kind": "train", "state": "committed", "started_unix": started, "finished_unix": finished,
                "update_metrics": {"train_loss": 1.0 / n, "staleness": staleness}, "metrics": {},
                "duration_s": finished - started, "bytes_received": 0, "base_version": f"r/{n - 1:06d}"}

    rounds = [{**version(1, 100.0, 130.0, 0.0), "kind": "init", "round": 0, "update_metrics": {}},
              version(1, 130.0, 160.0, 0.0), version(2, 160.0, 190.0, 1.5), version(3, 190.0, 400.0, 0.5)]
    run = {"run_id": "r", "state": "succeeded", "spec": {"asynchronous": {"buffer_size": 2}}}

    training, _ = metric_series(rounds)
    commits, staleness = version_timeline(rounds)
    drawn = _draw(run, rounds, tmp_path / "r.png")

    assert training == {"train_loss": [(1, 1.0), (2, 0.5), (3, 1 / 3)]}  # staleness has a panel of its own
    assert commits == [(1, 1.0), (2, 1.5), (3, 5.0)]  # minutes since the run's first round started
    assert staleness == [(1, 0.0), (2, 1.5), (3, 0.5)]
    assert drawn == (["train_loss"], []) and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert is_asynchronous(run) and not is_asynchronous({"spec": {"rounds": 3}})


def test_following_an_over_selected_run_names_the_agents_each_round_did_not_need():
    def rnd(n: int, state: str, stragglers: list[str]) -> dict:
        return {"round": n, "kind": "train", "state": state, "updates": 2, "participants": ["a", "b", "c", "d"],
                "stragglers": stragglers, "bytes_received": 0, "update_metrics": {}, "metrics": {}, "duration_s": 1.0}

    run = {"run_id": "r", "state": "running", "reason": "", "rounds_committed": 2, "latest_version": "r/000002",
           "spec": {"rounds": 3, "target_updates": 2}, "rounds": [rnd(1, "committed", ["c", "d"]),
                                                                  rnd(2, "committed", []), rnd(3, "training", [])]}
    said: list[str] = []
    told: set[int] = set()

    tell_not_needed(run, told, said.append)
    tell_not_needed(run, told, said.append)  # polled again: said once
    lines = run_summary(run)
    plain = {**run, "spec": {"rounds": 3}}

    assert said == ["round 1 committed on its first 2 updates; not needed: c, d"]
    assert lines[1].endswith("not needed: c, d") and "not needed" not in lines[2]
    assert not_needed(plain, run["rounds"][0]) == []  # without target_updates a straggler was needed


def test_a_run_shown_says_who_started_it():
    run = {"run_id": "r", "state": "running", "reason": "", "rounds_committed": 0, "latest_version": "",
           "spec": {"rounds": 3}, "rounds": [], "started_by": "token/tok-1 (ops, operator)"}

    assert run_summary(run)[0].endswith("; started by token/tok-1 (ops, operator)")
    assert "started by" not in run_summary({**run, "started_by": ""})[0]  # runs from before the field


def test_no_option_offers_an_empty_choice():
    offered = {(path, a.dest): a.choices for path, p in leaves(build_parser()).items() for a in p._actions
               if a.choices is not None and not isinstance(a, argparse._SubParsersAction)}

    assert offered
    assert [where for where, choices in offered.items() if "" in choices] == []


def test_audit_rows_name_the_actor_and_its_role():
    entry = {"seq": 3, "time_unix": 0, "action": "run.start", "target": "run/r1", "actor": "token/tok-1a2b",
             "actor_name": "ci", "role": "operator", "detail": {}}

    row = audit_row(entry)
    unnamed = audit_row({**entry, "actor": "schedule/nightly", "actor_name": "", "role": ""})

    assert row.endswith("token/tok-1a2b (ci, operator)")
    assert unnamed.endswith("schedule/nightly")
