"""`fedstream plot RUN|FEDERATION`: a PNG of a run's metrics per round, training and evaluation
apart, with round durations and bytes received per round; an asynchronous run's by version,
with each version's commit time and the mean staleness of its updates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedstream_cli.api import ApiError, Client, client_from, emit

# Counts and timings the agents report with their updates: not quality metrics.
_NOT_PLOTTED = ("_seconds", "examples_seen")
# How far behind an asynchronous run's updates were: a panel of its own, not a quality metric.
_APART = ("examples", "staleness")


def is_asynchronous(run: dict[str, Any]) -> bool:
    return bool((run.get("spec") or {}).get("asynchronous"))


def resolve_run(client: Client, name: str) -> dict[str, Any]:
    """The run named ``name``; else, when ``name`` is a federation, its latest run (the one
    created last). Raises SystemExit naming what was looked for when neither exists."""
    try:
        return dict(client.call("GET", f"/runs/{name}"))
    except ApiError as e:
        if e.status != 404:
            raise
    try:
        client.call("GET", f"/federations/{name}")
    except ApiError as e:
        if e.status != 404:
            raise
        raise SystemExit(f"error: no run and no federation is named {name!r} (`fedstream runs list`, "
                         "`fedstream federations list`)") from None
    runs = client.pages(f"/runs?federation={name}")
    if not runs:
        raise SystemExit(f"error: federation {name} has no run yet (`fedstream federations run {name}`)")
    latest = max(runs, key=lambda r: r["created_unix"])
    return dict(client.call("GET", f"/runs/{latest['run_id']}"))


def _series(rounds: list[dict[str, Any]], pick: Any) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> (x, value) points, from what ``pick(round)`` returns as (x, metrics)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        x, metrics = pick(r)
        for k, v in metrics.items():
            if not k.endswith(_NOT_PLOTTED) and k not in _APART:
                series.setdefault(k, []).append((x, v))
    return series


def metric_series(rounds: list[dict[str, Any]]) -> tuple[dict[str, list[tuple[int, float]]],
                                                           dict[str, list[tuple[int, float]]]]:
    """The training series (the agents' update metrics of each training round, and the
    server's own, e.g. distillation, prefixed ``server``) and the evaluation series (each
    evaluation round's combined metrics, at the round that committed the version it evaluated)."""
    train = [r for r in rounds if r["kind"] == "train"]
    training = _series(train, lambda r: (r["round"], r["update_metrics"]))
    for k, points in _series(train, lambda r: (r["round"], r["metrics"])).items():
        training[f"server {k}"] = points
    evaluations = [r for r in rounds if r["kind"] == "evaluate"]
    evaluation = _series(evaluations, lambda r: (int(r["base_version"].rpartition("/")[2] or r["round"]), r["metrics"]))
    return training, evaluation


def _metric_panel(ax: Any, series: dict[str, list[tuple[int, float]]], title: str, empty: str) -> None:
    for k, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), marker="o", label=k)
    if series:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("metric")


def version_timeline(rounds: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """An asynchronous run's committed versions: (version, minutes from the run's first round's
    start to the version's commit) and (version, mean staleness of the updates it took)."""
    train = [r for r in rounds if r["kind"] == "train" and r.get("finished_unix")]
    origin = min((r["started_unix"] for r in rounds if r.get("started_unix")), default=0.0)
    commits = [(r["round"], (r["finished_unix"] - origin) / 60) for r in train]
    staleness = [(r["round"], r["update_metrics"]["staleness"]) for r in train if "staleness" in r["update_metrics"]]
    return commits, staleness


def _round_panels(axes: Any, rounds: list[dict[str, Any]]) -> None:
    colors = {"init": "tab:gray", "train": "tab:blue", "evaluate": "tab:orange"}
    for kind, color in colors.items():
        of_kind = [r for r in rounds if r["kind"] == kind]
        if of_kind:
            axes[0].bar([r["round"] for r in of_kind], [r["duration_s"] or 0 for r in of_kind], color=color, label=kind)
            axes[1].bar([r["round"] for r in of_kind], [r["bytes_received"] / (1 << 20) for r in of_kind], color=color)
    axes[0].set_ylabel("round duration (s)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("updates received (MiB)")
    axes[1].set_xlabel("round")


def _version_panels(axes: Any, rounds: list[dict[str, Any]]) -> None:
    commits, staleness = version_timeline(rounds)
    if commits:
        axes[0].plot(*zip(*commits, strict=True), marker="o", color="tab:blue")
    axes[0].set_ylabel("committed at (min)")
    axes[0].set_title("commit time of each version (its slope: versions per minute)", fontsize=10)
    if staleness:
        axes[1].bar(*zip(*staleness, strict=True), color="tab:orange")
    axes[1].set_ylabel("mean staleness (versions)")
    axes[1].set_xlabel("version")


def _draw(run: dict[str, Any], rounds: list[dict[str, Any]], out: Path) -> tuple[list[str], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    training, evaluation = metric_series(rounds)
    fig, axes = plt.subplots(4, 1, figsize=(8, 12), dpi=100, sharex=True)
    _metric_panel(axes[0], training, "training: the agents' updates (weighted by examples)", "no training round")
    _metric_panel(axes[1], evaluation, "evaluation: federated evaluation of each version",
                  "no evaluation round (run with --evaluate-every N)")
    if is_asynchronous(run):
        _version_panels(axes[2:], rounds)
    else:
        _round_panels(axes[2:], rounds)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {run['run_id']} ({run['state']}{', asynchronous' if is_asynchronous(run) else ''})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return sorted(training), sorted(evaluation)


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("fedstream plot needs matplotlib: pip install 'fedstream-cli[plot]'") from None
    run = resolve_run(client_from(args), args.run)
    rounds = [r for r in run["rounds"] if r["state"] == "committed"]
    if not rounds:
        raise SystemExit(f"run {run['run_id']} has no committed round to plot")
    out = args.output or Path(f"{run['run_id']}.png")
    training, evaluation = _draw(run, rounds, out)
    by = "version" if is_asynchronous(run) else "round"
    emit(args, {"path": str(out), "run_id": run["run_id"], "rounds": len(rounds), "by": by,
                "training_metrics": training, "evaluation_metrics": evaluation},
         [f"{out}: run {run['run_id']}, {len(rounds)} rounds, by {by}; training: {', '.join(training) or '-'}; "
          f"evaluation: {', '.join(evaluation) or '-'}"])
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    plot = sub.add_parser(
        "plot", parents=[common], help="write a PNG of a run's metrics per round (needs matplotlib)",
        description="Plots a run, or a federation's latest run: the training metrics of its updates, the "
        "federated evaluation metrics of its versions (each in its own panel), round durations and bytes "
        "received per round; for an asynchronous run, by version: each version's commit time (minutes "
        "since the run started) and the mean staleness of the updates it took.")
    plot.add_argument("run", metavar="RUN|FEDERATION", help="a run id, or a federation id for its latest run")
    plot.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                      help="file to write (default: RUN.png, RUN the run plotted)")
    plot.set_defaults(func=cmd_plot)
