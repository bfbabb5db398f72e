"""FedReID on this machine: local training only, FedPav, FedPav + cosine-distance weights, FedPav +
server-side distillation, and all together, through the services at fixed seeds.

1. Sites: with --data DIR, every subdirectory of DIR in the Market-1501 layout is a site (the
   published data sets in their layouts: Market-1501, DukeMTMC-reID, CUHK03-NP, ... each one
   site) and DIR/public holds the unlabeled public set for distillation; without it, a seeded
   generator writes four sites of very different sizes and a public set
   (`fedstream data generate-reid`).
2. Federated configurations: aggregator (holding the public set), scheduler and one agent per
   site as processes; R rounds of E local epochs of FedPav. After the run every round's model
   is downloaded and evaluated on every site's query/gallery split (Market-1501 protocol).
3. Local only: each site trains its own model (its own classifier) for R x E epochs, evaluated
   every E epochs.
4. Prints per-site Rank-1 and mAP of the last round, the mean over sites, and the spread
   (standard deviation) of the site-mean Rank-1 over the last rounds; writes the table
   (fedreid-benchmark.md) and a PNG of Rank-1 per round (fedreid-rank1.png) into --out, by
   default the work directory; --write-docs writes them into docs/ instead, where the
   published figures live.

The paper's experiment (nine sites, ResNet-50, E=1, 300 rounds) on a GPU machine:
    python bench/fedreid.py --data /data/fedreid --preset full --rounds 300 --epochs 1 --device cuda

Usage: python bench/fedreid.py [--preset tiny] [--rounds 30] [--epochs 1] [--data DIR] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, TrainParams
from fedstream_tasks.reid import ReIDHeldout, ReIDTask
from fedstream_tasks.reid.data import DEFAULT_SITES, SiteSpec, generate_sites
from fedstream_tasks.torchio import state_of
from fedstream_testing.local import LocalFederation

ROOT = Path(__file__).resolve().parent.parent
# Configuration name -> FedPav parameters (None: every site trains alone).
CONFIGS: dict[str, dict[str, object] | None] = {
    "local only": None,
    "FedPav": {"weights": "examples"},
    "FedPav + cosine": {"weights": "cosine"},
    "FedPav + KD": {"weights": "examples", "distill_every": 1},
    "FedPav + cosine + KD": {"weights": "cosine", "distill_every": 1},
}


@dataclass
class Curve:
    """Per round: site -> (Rank-1, mAP)."""

    rounds: list[dict[str, tuple[float, float]]] = field(default_factory=list)
    seconds: float = 0.0

    def mean_rank1(self) -> list[float]:
        return [statistics.fmean(r[0] for r in rnd.values()) for rnd in self.rounds]


def average(curves: list[Curve]) -> Curve:
    """The element-wise mean of the same configuration's curves over training seeds."""
    out = Curve(seconds=statistics.fmean(c.seconds for c in curves))
    for rounds in zip(*(c.rounds for c in curves), strict=True):
        out.rounds.append({site: (statistics.fmean(r[site][0] for r in rounds), statistics.fmean(r[site][1] for r in rounds))
                           for site in rounds[0]})
    return out


def evaluate_all(task: ReIDTask, model: torch.nn.Module, heldout: dict[str, ReIDHeldout], device: torch.device) -> dict[str, tuple[float, float]]:
    out = {}
    for site, data in heldout.items():
        m = task.evaluate(model, data, device)
        out[site] = (m["rank1"], m["map"])
    return out


def find_sites(args: argparse.Namespace, workdir: Path, task: ReIDTask) -> tuple[list[Path], Path | None]:
    if args.data is not None:
        sites = sorted(d for d in args.data.iterdir() if (d / "bounding_box_train").is_dir())
        if not sites:
            raise SystemExit(f"{args.data} holds no site in the Market-1501 layout (<site>/bounding_box_train/)")
        public = args.data / "public"
        return sites, public if public.is_dir() else None
    specs = tuple(SiteSpec(s.name, max(3, round(s.identities * args.scale)), s.cameras, s.images_per_camera)
                  for s in DEFAULT_SITES)
    return generate_sites(workdir / "data", seed=args.seed, sites=specs, height=task.config.height,
                          width=task.config.width, public_images=args.public_images)


def federated(args: argparse.Namespace, task: ReIDTask, params: dict[str, object], sites: list[Path],
              public: Path | None, heldout: dict[str, ReIDHeldout], workdir: Path, label: str, seed: int) -> Curve:
    device = torch.device(args.device)
    curve = Curve()
    started = time.perf_counter()
    settings = {"DISTILL__PUBLIC_DATA": str(public), "DISTILL__DEVICE": args.device} if "distill_every" in params else {}
    with LocalFederation(workdir) as fed:
        agg = fed.start_aggregator(settings)
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "1"})
        threads = max(1, (os.cpu_count() or 1) // len(sites))
        for site in sites:
            fed.start_agent(site.name, sched, 0, 1, {
                "TASKS": f'["{task.name}"]', "DATA__PATH": str(site), "CPU_THREADS": str(threads),
                "DEVICE": args.device,
            })
        strategy = round_pb2.StrategySpec(name="fedpav")
        strategy.params.update(params)
        spec = scheduler_pb2.RunSpec(
            task=task.name, rounds=args.rounds, min_agents=len(sites), round_timeout_s=3600,
            wait_for_agents_s=300, strategy=strategy,
            training=round_pb2.TrainingConfig(
                local_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=seed
            ),
        )
        run = fed.run(sched, spec, "fedreid", label)
        if run.state != scheduler_pb2.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"{label}: run {run.state}: {run.reason}\n{fed.tail('aggregator')}")
        curve.seconds = time.perf_counter() - started
        committed = [r for r in run.rounds if r.kind == round_pb2.ROUND_KIND_TRAIN and r.state == round_pb2.ROUND_STATE_COMMITTED]
        for r in committed:
            model = task.shared_model(state_of(download_model(fed.channel(agg), run.run_id, r.version).buffer))
            curve.rounds.append(evaluate_all(task, model, heldout, device))
    return curve


def local_only(args: argparse.Namespace, task: ReIDTask, sites: list[Path], heldout: dict[str, ReIDHeldout], seed: int) -> Curve:
    device = torch.device(args.device)
    curve = Curve(rounds=[{} for _ in range(args.rounds)])
    started = time.perf_counter()
    for site in sites:
        data = task.load_site(SiteDataSettings(path=site))  # sizes the site's classifier
        model = task.build_model(0)
        for r in range(args.rounds):
            task.train(model, data, TrainParams(args.epochs, args.batch_size, args.lr, seed * 1000 + r), device)
            m = task.evaluate(model, heldout[site.name], device)
            curve.rounds[r][site.name] = (m["rank1"], m["map"])
        print(f"local only: {site.name} done", file=sys.stderr)
    curve.seconds = time.perf_counter() - started
    return curve


def spread(curve: Curve, last: int) -> float:
    tail = curve.mean_rank1()[-last:]
    return statistics.pstdev(tail) if len(tail) > 1 else 0.0


def table(runs: dict[str, list[Curve]], sites: list[str], last: int) -> list[str]:
    """Per site: Rank-1 / mAP after the last round (mean over seeds); the site-mean Rank-1 and
    mAP (± their standard deviation over seeds); the spread of the site-mean Rank-1 over the
    last rounds (mean over seeds)."""
    head = " | ".join(f"{s} R1 / mAP" for s in sites)
    lines = [f"| configuration | {head} | mean R1 | mean mAP | R1 std, last {last} rounds | seconds per run |",
             "| --- |" + " --- |" * (len(sites) + 4)]
    for name, curves in runs.items():
        final = average(curves).rounds[-1]
        cells = " | ".join(f"{final[s][0]:.3f} / {final[s][1]:.3f}" for s in sites)
        r1s = [statistics.fmean(c.rounds[-1][s][0] for s in sites) for c in curves]
        maps = [statistics.fmean(c.rounds[-1][s][1] for s in sites) for c in curves]

        def pm(values: list[float]) -> str:
            return f"{statistics.fmean(values):.3f}" + (f" ± {statistics.pstdev(values):.3f}" if len(values) > 1 else "")

        stab = statistics.fmean(spread(c, last) for c in curves)
        seconds = statistics.fmean(c.seconds for c in curves)
        lines.append(f"| {name} | {cells} | {pm(r1s)} | {pm(maps)} | {stab:.4f} | {seconds:.0f} |")
    return lines


def claims(runs: dict[str, list[Curve]], sites: list[str], largest: str, last: int) -> list[str]:
    """The paper's claims, checked on these figures (only for configurations that ran); curves
    averaged over seeds, spreads the mean of each seed's."""
    out = []
    curves = {name: average(c) for name, c in runs.items()}

    def stability(name: str) -> float:
        return statistics.fmean(spread(c, last) for c in runs[name])

    def final(name: str, site: str) -> float:
        return curves[name].rounds[-1][site][0]

    if "local only" in curves and "FedPav" in curves:
        better = [s for s in sites if final("FedPav", s) > final("local only", s)]
        out.append(f"FedPav beats local training on {len(better)} of {len(sites)} sites (Rank-1): {', '.join(better) or 'none'}")
    if "FedPav" in curves and "FedPav + cosine" in curves:
        a, b = final("FedPav", largest), final("FedPav + cosine", largest)
        out.append(f"cosine-distance weights help the largest site ({largest}): "
                   f"{'yes' if b > a else 'no'} (Rank-1 {a:.3f} -> {b:.3f})")
    if "FedPav" in curves and "FedPav + KD" in curves:
        a, b = stability("FedPav"), stability("FedPav + KD")
        out.append(f"distillation steadies convergence (std of mean Rank-1 over the last {last} rounds): "
                   f"{'yes' if b < a else 'no'} ({a:.4f} -> {b:.4f})")
        a1 = statistics.fmean(curves["FedPav"].mean_rank1()[-last:])
        b1 = statistics.fmean(curves["FedPav + KD"].mean_rank1()[-last:])
        out.append(f"distillation raises mean Rank-1 over the last {last} rounds: {'yes' if b1 > a1 else 'no'} ({a1:.3f} -> {b1:.3f})")
    return out


def plot(curves: dict[str, Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, c in curves.items():
        ys = c.mean_rank1()
        ax.plot(range(1, len(ys) + 1), ys, label=name, linewidth=1.6)
    ax.set_xlabel("round")
    ax.set_ylabel("Rank-1, mean over sites")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"], help="model size (full: ResNet-50, 256x128)")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds (R); local only trains R x E epochs")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (E)")
    parser.add_argument("--batch-size", type=int, default=32, help="local batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate of the head (the backbone's is a tenth)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds each configuration runs with (0..N-1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each generated site's identity count")
    parser.add_argument("--public-images", type=int, default=128, help="generated public set size")
    parser.add_argument("--data", type=Path, default=None, help="directory of sites in the Market-1501 layout (+ public/)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--last", type=int, default=10, help="rounds the convergence spread is measured over")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory for the services' logs, models and curves.json (default: a new temporary one)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None,
                       help="where the table (fedreid-benchmark.md) and the PNG go (default: the work directory)")
    where.add_argument("--write-docs", action="store_true",
                       help=f"write them into {ROOT / 'docs'}, replacing the published figures")
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedstream-fedreid-"))
    args.out = ROOT / "docs" if args.write_docs else args.out or workdir
    torch.manual_seed(args.seed)
    task = get_task("fedreid" if args.preset == "full" else f"fedreid-{args.preset}")
    assert isinstance(task, ReIDTask)
    sites, public = find_sites(args, workdir, task)
    if public is None and any(CONFIGS[n] and "distill_every" in CONFIGS[n] for n in names):  # type: ignore[operator]
        raise SystemExit(f"distillation needs a public set: {args.data}/public holds no images")
    heldout = {s.name: task.load_heldout(SiteDataSettings(path=s)) for s in sites}
    sizes = {s.name: len(list((s / "bounding_box_train").iterdir())) for s in sites}
    largest = max(sizes, key=lambda k: sizes[k])
    last = min(args.last, args.rounds)
    print(f"sites: {', '.join(f'{k} {v} training images' for k, v in sizes.items())}; {args.rounds} rounds x "
          f"{args.epochs} epochs; workdir {workdir}", file=sys.stderr)

    runs: dict[str, list[Curve]] = {}
    for i, name in enumerate(names):
        params = CONFIGS[name]
        for seed in range(args.seeds):
            if params is None:
                curve = local_only(args, task, sites, heldout, seed)
            else:
                curve = federated(args, task, params, sites, public, heldout, workdir / f"fed-{i}-{seed}",
                                  f"{name} (seed {seed})", seed)
            runs.setdefault(name, []).append(curve)

    command = (f".venv/bin/python bench/fedreid.py --preset {args.preset} --rounds {args.rounds} --epochs {args.epochs}"
               + (f" --data {args.data}" if args.data else f" --scale {args.scale} --seed {args.seed}")
               + f" --seeds {args.seeds}" + (" --write-docs" if args.write_docs else ""))
    site_names = [s.name for s in sites]
    lines = [f"FedReID, preset {args.preset}: {len(sites)} sites ({', '.join(f'{k} {v}' for k, v in sizes.items())} "
             f"training images), {args.rounds} rounds x {args.epochs} local epochs, batch {args.batch_size}, lr {args.lr}, "
             f"{args.seeds} training seed(s). Rank-1 / mAP after the last round on each site's query/gallery split "
             "(mean over seeds; ± is the standard deviation over seeds).",
             f"Reproduce: `{command}`", "", *table(runs, site_names, last), "",
             *[f"- {c}" for c in claims(runs, site_names, largest, last)]]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fedreid-benchmark.md").write_text(
        "# FedReID benchmark (generated by bench/fedreid.py)\n\n" + "\n".join(lines) + "\n\n![Rank-1 per round](fedreid-rank1.png)\n")
    plot({k: average(v) for k, v in runs.items()}, args.out / "fedreid-rank1.png",
         f"FedReID ({args.preset}, {len(sites)} sites, E={args.epochs}, mean of {args.seeds} seed(s))")
    (workdir / "curves.json").write_text(json.dumps({k: [c.rounds for c in v] for k, v in runs.items()}))
    print(f"\nwrote {args.out / 'fedreid-benchmark.md'} and {args.out / 'fedreid-rank1.png'}; per-round figures in {workdir / 'curves.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        sys.exit(f"{e.code().name}: {e.details()}")
