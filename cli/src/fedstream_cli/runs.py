"""`fedstream runs ...`: list, show, follow and cancel runs over the admin API."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from fedstream_cli.api import ApiError, Client, client_from, emit, list_command
from fedstream_cli.progress import Bar, human_bytes

# "staleness": an asynchronous run's mean staleness of the updates counted into a version.
SHOWN_METRICS = ("train_loss", "accuracy", "map50", "map", "rank1", "staleness")
RECONNECT_S = 120.0
# No connection (0), or a proxy in front of a scheduler that is not there (yet).
UNREACHABLE = (0, 502, 503, 504)


def _note(run: dict[str, Any]) -> str:
    current = next((r for r in reversed(run["rounds"]) if r["state"] not in ("committed", "failed", "cancelled")), None)
    buffer = (run["spec"].get("asynchronous") or {}).get("buffer_size")
    if current is not None and buffer and current["kind"] == "train":  # an asynchronous run's version
        return (f"version {current['round']} {current['state']}: {current['updates']}/{buffer} updates buffered, "
                f"{human_bytes(current['bytes_received'])}")
    if current is not None:
        return (f"round {current['round']} ({current['kind']}) {current['state']}: "
                f"{current['updates']}/{len(current['participants'])} updates, {human_bytes(current['bytes_received'])}")
    if run["rounds"]:
        last = run["rounds"][-1]
        return f"round {last['round']} {last['state']}"
    return ""


def not_needed(run: dict[str, Any], rnd: dict[str, Any]) -> list[str]:
    """The agents an over-selected run's committed round did not need (it closed on its first
    ``target_updates`` updates): its stragglers; none for other rounds and runs."""
    if not (run.get("spec") or {}).get("target_updates") or rnd["kind"] != "train" or rnd["state"] != "committed":
        return []
    return list(rnd.get("stragglers") or [])


def tell_not_needed(run: dict[str, Any], told: set[int], say: Callable[[str], None]) -> None:
    """Says, once per round (``told`` keeps which), which agents each newly committed round of
    an over-selected run did not need."""
    for r in run["rounds"]:
        if r["state"] != "committed" or r["round"] in told:
            continue
        told.add(r["round"])
        spare = not_needed(run, r)
        if spare:
            say(f"round {r['round']} committed on its first {r['updates']} updates; not needed: {', '.join(spare)}")


def _poll(client: Client, run_id: str, bar: Bar, reconnect_s: float) -> dict[str, Any]:
    """The run, read again; while the admin API is unreachable (a scheduler restarting), says so
    once and tries again for up to ``reconnect_s`` seconds before raising the ApiError."""
    give_up = None
    while True:
        try:
            run: dict[str, Any] = client.call("GET", f"/runs/{run_id}")
        except ApiError as e:
            if e.status not in UNREACHABLE:
                raise
            if give_up is None:
                give_up = time.monotonic() + reconnect_s
                bar.say(f"admin API unreachable: {e}; reconnecting (for up to {reconnect_s:g} s)")
            if time.monotonic() >= give_up:
                raise ApiError(f"{e}; gave up reconnecting after {reconnect_s:g} s", e.status) from None
            time.sleep(1.0)
            continue
        if give_up is not None:
            bar.say(f"admin API reachable again; following run {run_id}")
        return run


def follow(client: Client, run_id: str, interval: float = 1.0, reconnect_s: float = RECONNECT_S) -> dict[str, Any]:
    """Shows a run's rounds as a progress bar until it ends; returns the finished run. The admin
    API going away mid-run (a scheduler restarting) is waited out for up to ``reconnect_s`` seconds."""
    run = client.call("GET", f"/runs/{run_id}")
    bar = Bar(run["spec"].get("rounds", 1), f"run {run_id}")
    told: set[int] = set()
    try:
        while True:
            tell_not_needed(run, told, bar.say)
            bar.show(run["rounds_committed"], _note(run))
            if run["state"] != "running":
                return dict(run)
            time.sleep(interval)
            run = _poll(client, run_id, bar, reconnect_s)
    finally:
        bar.close()


def reconnect_option(p: argparse.ArgumentParser) -> None:
    """--reconnect-s: how long following waits for an admin API that went away."""
    p.add_argument("--reconnect-s", type=float, default=RECONNECT_S, metavar="SECONDS",
                   help="while following, wait this long for an admin API that became unreachable (a scheduler "
                   f"restarting) before giving up; 0: give up at once (default {RECONNECT_S:g})")


def run_summary(run: dict[str, Any]) -> list[str]:
    """A run's state and a line per round with its headline metrics."""
    what = "versions (asynchronous)" if (run.get("spec") or {}).get("asynchronous") else "rounds"
    lines = [f"run {run['run_id']} {run['state']}{': ' + run['reason'] if run['reason'] else ''}; "
             f"{run['rounds_committed']} {what} committed; latest {run['latest_version'] or '-'}"
             + (f"; started by {run['started_by']}" if run.get("started_by") else "")]
    for r in run.get("rounds", []):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted({**r["update_metrics"], **r["metrics"]}.items())
                            if k in SHOWN_METRICS or k.startswith("distill_mse"))
        took = f"{r['duration_s']:.1f} s" if r["duration_s"] is not None else "-"
        spare = not_needed(run, r)
        metrics += f"  not needed: {', '.join(spare)}" if spare else ""
        lines.append(f"  round {r['round']:>3} {r['kind']:8} {r['state']:10} {r['updates']:>3} updates "
                     f"{human_bytes(r['bytes_received']):>10} {took:>8}  {metrics}")
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    query = "&".join(f"{k}={v}" for k, v in (("federation", args.federation), ("state", args.state)) if v)
    return list_command(args, "/runs" + (f"?{query}" if query else ""),
                        f"{'RUN':32} {'FEDERATION':20} {'STATE':10} {'TRIGGER':12} {'ROUNDS':>6} LATEST",
                        lambda r: f"{r['run_id']:32} {r['federation'] or '-':20} {r['state']:10} {r['trigger']:12} "
                        f"{r['rounds_committed']:>6} {r['latest_version'] or '-'}")


def cmd_get(args: argparse.Namespace) -> int:
    run = client_from(args).call("GET", f"/runs/{args.run}")
    emit(args, run, run_summary(run))
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    run = follow(client_from(args), args.run, reconnect_s=args.reconnect_s)
    emit(args, run, run_summary(run))
    return 0 if run["state"] == "succeeded" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    run = client_from(args).call("POST", f"/runs/{args.run}/cancel")
    emit(args, run, [f"run {run['run_id']} {run['state']}"])
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    runs = sub.add_parser(
        "runs", help="list, show, follow and cancel runs (start one with `federations run`)",
    ).add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    ls = runs.add_parser("list", parents=[common], help="list runs")
    ls.add_argument("--federation", default="", help="only this federation's runs")
    ls.add_argument("--state", default="", choices=["running", "succeeded", "failed", "cancelled"],
                    help="only runs in this state")
    ls.set_defaults(func=cmd_list)
    for name, func, text in (("get", cmd_get, "show a run and its rounds"),
                             ("follow", cmd_follow, "show a run's progress until it ends; exit 1 unless it succeeds"),
                             ("cancel", cmd_cancel, "cancel a run")):
        p = runs.add_parser(name, parents=[common], help=text)
        p.add_argument("run", help="run id")
        if func is cmd_follow:
            reconnect_option(p)
        p.set_defaults(func=func)
