"""`fedstream federations ...`: a federation is a named run spec (and an optional schedule); its runs start here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedstream_cli.api import Client, client_from, emit, list_command
from fedstream_cli.runs import follow, reconnect_option, run_summary
from fedstream_cli.runspec import add_spec_arguments, spec_from_args


def _row(f: dict[str, Any]) -> str:
    sched = f"{f['schedule']['cron']} {f['schedule']['timezone']}" if f["schedule"] else "-"
    return (f"{f['federation_id']:24} {f['spec']['task']:16} {f['spec']['strategy']['name']:10} "
            f"{f['spec']['rounds']:>6}  {sched:24} {f['latest_version'] or '-'}")


HEADER = f"{'FEDERATION':24} {'TASK':16} {'STRATEGY':10} {'ROUNDS':>6}  {'SCHEDULE':24} LATEST"


def cmd_list(args: argparse.Namespace) -> int:
    return list_command(args, "/federations", HEADER, _row)


def cmd_get(args: argparse.Namespace) -> int:
    fed = client_from(args).call("GET", f"/federations/{args.federation}")
    emit(args, fed, [HEADER, _row(fed)])
    return 0


def _schedule(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.cron:
        return None
    out = {"cron": args.cron, "timezone": args.timezone or "UTC"}
    if args.missed:
        out["missed"] = args.missed
    return out


def task_offers(client: Client, task: str) -> str:
    """Empty when a live agent offers ``task`` (or takes any task); else what is wrong, naming
    the tasks live agents do offer and which agents offer each."""
    alive = client.pages("/agents?status=alive")
    if any(not a["tasks"] or task in a["tasks"] for a in alive):
        return ""
    offers: dict[str, list[str]] = {}
    for a in alive:
        for t in a["tasks"]:
            offers.setdefault(t, []).append(a["agent_id"])
    offered = "; ".join(f"{t} ({', '.join(ids)})" for t, ids in sorted(offers.items()))
    return f"no live agent offers task {task!r}: " + (f"live agents offer {offered}" if offered else "no agent is alive")


def _check_task(client: Client, args: argparse.Namespace) -> None:
    """Warns on stderr when no live agent offers the task; with --require-offered-task, refuses."""
    problem = task_offers(client, args.task) if args.task else ""
    if problem and args.require_offered_task:
        raise SystemExit(f"error: {problem}; federation {args.federation} not {args.fed_command}d")
    if problem:
        print(f"warning: {problem}; its runs wait --wait-for-agents seconds for agents that offer it, "
              "then fail", file=sys.stderr)


def cmd_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"federation_id": args.federation, "description": args.description or "",
                            "spec": spec_from_args(args)}
    if schedule := _schedule(args):
        body["schedule"] = schedule
    body.update(_policies(args))
    client = client_from(args)
    _check_task(client, args)
    fed = client.call("POST", "/federations", json=body)
    emit(args, fed, [f"federation {fed['federation_id']} created"
                     + (f"; runs at '{args.cron}' ({body['schedule']['timezone']})" if args.cron else "")])
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    """Sends the flags given as a JSON merge patch of the federation's spec: nested sections
    (training, selection, asynchronous, strategy) change field by field, the rest stays."""
    client = client_from(args)
    _check_task(client, args)
    changes = spec_from_args(args)
    if args.synchronous:
        changes["asynchronous"] = None  # null deletes the block: runs are synchronous again
    if args.no_dp:
        changes["privacy"] = None  # its ledger stays: what was spent stays spent
    if args.no_secure_aggregation:
        changes["secure_aggregation"] = None
    body: dict[str, Any] = {"clear_schedule": True} if args.clear_schedule else {}
    if changes:
        body["spec"] = changes
    if args.description is not None:
        body["description"] = args.description
    if schedule := _schedule(args):
        body["schedule"] = schedule
    body.update(_policies(args))
    fed = client.call("PATCH", f"/federations/{args.federation}", json=body)
    emit(args, fed, [f"federation {fed['federation_id']} updated", HEADER, _row(fed)])
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    """The differential privacy the federation's runs have spent, round by round."""
    rep = client_from(args).call("GET", f"/federations/{args.federation}/privacy")
    budget = f"{rep['budget']:g}" if rep["budget"] is not None else "none"
    lines = [f"federation {args.federation}: epsilon {rep['spent']:.4g} spent of {budget}"
             + (f" at delta {rep['delta']:g}" if rep["delta"] else "")
             + (f", {rep['remaining']:.4g} left" if rep["remaining"] is not None else ""),
             f"{'RUN':<24} {'ROUND':>5} {'MODE':<8} {'NOISE':>7} {'SAMPLING':>8} {'EPSILON':>9}"]
    lines += [f"{c['run_id']:<24} {c['round']:>5} {c['mode']:<8} {c['noise_multiplier']:>7g} {c['sampling']:>8.3g} "
              f"{c['epsilon']:>9.4g}" for c in rep["charges"]]
    emit(args, rep, lines)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client_from(args).call("DELETE", f"/federations/{args.federation}")
    emit(args, {"federation_id": args.federation, "deleted": True}, [f"federation {args.federation} deleted"])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    client = client_from(args)
    run = client.call("POST", f"/federations/{args.federation}/runs",
                      json={"run_id": args.run_id, "initial_version": args.initial_version})
    if not args.follow:
        emit(args, run, [f"run {run['run_id']} started"])
        return 0
    run = follow(client, run["run_id"], reconnect_s=args.reconnect_s)
    emit(args, run, run_summary(run))
    return 0 if run["state"] == "succeeded" else 1


def _schedule_arguments(p: argparse.ArgumentParser, creating: bool) -> None:
    group = p.add_argument_group("schedule")
    group.add_argument("--cron", default="", help="start runs on this five-field cron schedule, e.g. '0 2 * * *'")
    group.add_argument("--timezone", default="", help="IANA time zone the cron expression is read in (default: UTC)")
    group.add_argument("--missed", choices=["skip", "run_once"], default=None,
                       help="a slot missed while every scheduler was down: skipped (default) or run once")
    if not creating:
        group.add_argument("--clear-schedule", action="store_true", help="remove the schedule: runs start on request only")


def json_object(text: str) -> dict[str, Any]:
    """An argument's JSON object; argparse reports the ValueError as a bad value."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _policies(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("releases", args.releases), ("site_requests", args.site_requests)) if v is not None}


def _policy_arguments(p: argparse.ArgumentParser, creating: bool) -> None:
    group = p.add_argument_group("policies (docs/releases.md)" + ("" if creating else ": JSON merge patches"))
    group.add_argument("--releases", type=json_object, default=None, metavar="JSON",
                       help='release channels and their approvals, e.g. \'{"channels": {"production": '
                       '{"admin_approvals": 2, "site_approvals": 1, "require": {"metric": "accuracy", "min": 0.9}}}}\'')
    group.add_argument("--site-requests", type=json_object, default=None, metavar="JSON",
                       help='whether sites\' agents may request runs, e.g. \'{"mode": "approve", '
                       '"max_per_site_per_day": 2}\' (mode auto, approve or refuse; default refuse)')


def _task_check_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--require-offered-task", action="store_true",
                   help="refuse (exit 1, nothing changed) when no live agent offers --task; by default a warning "
                   "names the tasks live agents offer and the federation is saved anyway, since agents may come later")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    feds = sub.add_parser(
        "federations", help="create, change and start federations (named run specs)",
        description="A federation is a named run spec and an optional cron schedule. `create` it with the "
        "spec flags, start a run of it at once with `run`, change it with `update`.",
    ).add_subparsers(dest="fed_command", required=True, metavar="COMMAND")
    feds.add_parser("list", parents=[common], help="list federations").set_defaults(func=cmd_list)
    get = feds.add_parser("get", parents=[common], help="show a federation")
    get.add_argument("federation", help="federation id")
    get.set_defaults(func=cmd_get)
    create = feds.add_parser("create", parents=[common], help="create a federation (a warning when no live agent offers its task)")
    create.add_argument("federation", help="id: lowercase letters, digits and '-'")
    create.add_argument("--description", default="", help="what it is for")
    add_spec_arguments(create)
    _schedule_arguments(create, creating=True)
    _policy_arguments(create, creating=True)
    _task_check_argument(create)
    create.set_defaults(func=cmd_create)
    update = feds.add_parser(
        "update", parents=[common], help="change a federation: only the flags given change",
        description="Changes a federation: only the flags given change, nested settings field by field "
        "(--fairness-floor keeps --prefer-fast, --staleness-a keeps --staleness; --strategy-param merges with "
        "the strategy's parameters, and another --strategy starts from its own defaults).")
    update.add_argument("federation", help="federation id")
    update.add_argument("--description", default=None, help="what it is for")
    update.add_argument("--synchronous", action="store_true",
                        help="remove the asynchronous settings: the federation's runs are synchronous again")
    update.add_argument("--no-dp", action="store_true",
                        help="remove differential privacy (what its runs spent stays in the ledger)")
    update.add_argument("--no-secure-aggregation", action="store_true", help="remove secure aggregation")
    add_spec_arguments(update, defaults=False)
    _schedule_arguments(update, creating=False)
    _policy_arguments(update, creating=False)
    _task_check_argument(update)
    update.set_defaults(func=cmd_update)
    privacy = feds.add_parser("privacy", parents=[common],
                              help="the epsilon a federation's runs have spent, round by round, and its budget")
    privacy.add_argument("federation", help="federation id")
    privacy.set_defaults(func=cmd_privacy)
    delete = feds.add_parser("delete", parents=[common], help="delete a federation (not while one of its runs runs)")
    delete.add_argument("federation", help="federation id")
    delete.set_defaults(func=cmd_delete)
    run = feds.add_parser("run", parents=[common], help="start a run of a federation now")
    run.add_argument("federation", help="federation id")
    run.add_argument("--run-id", default="", help="id of the new run (default: generated)")
    run.add_argument("--initial-version", default="",
                     help="start from this version (default: the federation's newest pinned, else latest model)")
    run.add_argument("--follow", action="store_true", help="show progress until the run ends; exit 1 unless it succeeds")
    reconnect_option(run)
    run.set_defaults(func=cmd_run)
