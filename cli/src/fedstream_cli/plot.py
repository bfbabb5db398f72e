"""`fedstream plot RUN`: a PNG of a run's metrics, round durations and bytes received per round."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedstream_cli.api import client_from, emit


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("fedstream plot needs matplotlib: pip install 'fedstream-cli[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    run = client_from(args).call("GET", f"/runs/{args.run}")
    rounds = [r for r in run["rounds"] if r["state"] == "committed"]
    if not rounds:
        raise SystemExit(f"run {args.run} has no committed round to plot")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), dpi=100, sharex=True)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rounds:
        for k, v in {**r["update_metrics"], **r["metrics"]}.items():
            if not k.endswith(("_seconds", "examples_seen")) and k != "examples":
                series.setdefault(k, []).append((r["round"], v))
    for k, points in sorted(series.items()):
        axes[0].plot(*zip(*points, strict=True), marker="o", label=k)
    axes[0].set_ylabel("metric")
    axes[0].legend(fontsize=8)
    axes[1].bar([r["round"] for r in rounds], [r["duration_s"] or 0 for r in rounds])
    axes[1].set_ylabel("round duration (s)")
    axes[2].bar([r["round"] for r in rounds], [r["bytes_received"] / (1 << 20) for r in rounds])
    axes[2].set_ylabel("updates received (MiB)")
    axes[2].set_xlabel("round")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {run['run_id']} ({run['state']})")
    fig.tight_layout()
    out = args.output or Path(f"{args.run}.png")
    fig.savefig(out)
    plt.close(fig)
    emit(args, {"path": str(out), "rounds": len(rounds), "metrics": sorted(series)},
         [f"{out}: {len(rounds)} rounds, {len(series)} metrics"])
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    plot = sub.add_parser("plot", parents=[common], help="write a PNG of a run's metrics per round (needs matplotlib)")
    plot.add_argument("run", help="run id")
    plot.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="file to write (default: RUN.png)")
    plot.set_defaults(func=cmd_plot)
