"""FedVision on this machine: camera owners A, B and C train one detector through the services,
against each site training alone for the same number of epochs.

1. Writes the three sites' data sets (VOC layout, each site its own backgrounds, lighting,
   object mix and image count: `fedstream data generate-detection`).
2. Federated: aggregator, scheduler and three agents as processes, each agent holding one
   site's files; R rounds of E local epochs (FedAvg), then a federated evaluation round.
3. Local: each site trains the same initial model on its own data for R x E epochs.
4. Every model is evaluated on the union of the three sites' held-out sets and on each site's
   own: VOC mAP@0.5 and COCO mAP@[.5:.95].

Usage: python bench/fedvision.py [--preset small] [--rounds 20] [--epochs 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch

from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, TrainParams
from fedstream_tasks.detection import DetectionData, DetectionTask
from fedstream_tasks.detection.data import SHAPES, VOC_NAMES, generate_sites
from fedstream_tasks.torchio import state_of
from fedstream_testing.local import LocalFederation

SIZES = {"tiny": 64, "small": 96, "full": 416}


def union(parts: list[DetectionData]) -> DetectionData:
    return DetectionData(
        torch.cat([p.images for p in parts]),
        [t for p in parts for t in p.targets],
        [s for p in parts for s in p.samples],
    )


def scores(task: DetectionTask, model: torch.nn.Module, heldout: dict[str, DetectionData]) -> dict[str, float]:
    cpu = torch.device("cpu")
    out = {}
    both = task.evaluate(model, union(list(heldout.values())), cpu)
    out["union map50"], out["union map"] = both["map50"], both["map"]
    for site, data in heldout.items():
        out[f"{site} map50"] = task.evaluate(model, data, cpu)["map50"]
    return out


def federated(args: argparse.Namespace, sites: list[Path], workdir: Path) -> tuple[torch.nn.Module, scheduler_pb2.Run, float]:
    task_name = f"fedvision-{args.preset}" if args.preset != "full" else "fedvision"
    started = time.perf_counter()
    with LocalFederation(workdir / "services") as fed:
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "1"})
        threads = max(1, (os.cpu_count() or 1) // len(sites))
        for site in sites:
            fed.start_agent(site.name, sched, 0, 1, {
                "TASKS": f'["{task_name}"]', "DATA__PATH": str(site), "CPU_THREADS": str(threads),
            })
        spec = scheduler_pb2.RunSpec(
            task=task_name, rounds=args.rounds, min_agents=len(sites), round_timeout_s=1800,
            wait_for_agents_s=300, evaluate_every=args.rounds,
            training=round_pb2.TrainingConfig(
                local_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed
            ),
        )
        run = fed.run(sched, spec, "fedvision", "federated")
        if run.state != scheduler_pb2.RUN_STATE_SUCCEEDED:
            raise SystemExit(f"federated run {run.state}: {run.reason}")
        task = get_task(task_name)
        model = task.build_model(0)
        model.load_state_dict(state_of(download_model(fed.channel(agg), run.run_id, run.latest_version).buffer))
    return model, run, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies each site's image count")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedstream-fedvision-"))
    torch.set_num_threads(os.cpu_count() or 1)
    # The full preset's head has Pascal VOC's classes: the shapes are annotated under three of them.
    names = VOC_NAMES if args.preset == "full" else SHAPES
    sites = generate_sites(workdir / "data", seed=args.seed, size=SIZES[args.preset], scale=args.scale, names=names)
    task = get_task(f"fedvision-{args.preset}" if args.preset != "full" else "fedvision")
    assert isinstance(task, DetectionTask)
    heldout = {s.name.removeprefix("site-"): task.load_heldout(SiteDataSettings(path=s)) for s in sites}
    train = {s.name.removeprefix("site-"): task.load_site(SiteDataSettings(path=s)) for s in sites}
    print(f"sites: {', '.join(f'{k} {len(v.targets)} train / {len(heldout[k].targets)} held-out' for k, v in train.items())}; "
          f"{args.rounds} rounds x {args.epochs} epochs; workdir {workdir}", file=sys.stderr)

    fed_model, run, fed_seconds = federated(args, sites, workdir)
    rows = {"federated (A+B+C)": scores(task, fed_model, heldout)}
    evaluation = next(r for r in run.rounds if r.kind == round_pb2.ROUND_KIND_EVALUATE)
    local_seconds = 0.0
    for site, data in train.items():
        model = task.build_model(0)  # the federation's initial model (init round, seed 0)
        started = time.perf_counter()
        task.train(model, data, TrainParams(args.rounds * args.epochs, args.batch_size, args.lr, args.seed),
                   torch.device("cpu"))
        local_seconds += time.perf_counter() - started
        rows[f"local {site} only"] = scores(task, model, heldout)

    columns = list(next(iter(rows.values())))
    print(f"\nFedVision, preset {args.preset}: {args.rounds} rounds x {args.epochs} local epochs "
          f"(local models: {args.rounds * args.epochs} epochs); reproduce with: "
          f".venv/bin/python bench/fedvision.py --preset {args.preset} --rounds {args.rounds} --epochs {args.epochs}")
    print(f"| model | {' | '.join(columns)} |")
    print(f"| --- |{' --- |' * len(columns)}")
    for name, values in rows.items():
        print(f"| {name} | {' | '.join(f'{values[c]:.3f}' for c in columns)} |")
    metrics = "  ".join(f"{k} {v:.3f}" for k, v in sorted(evaluation.metrics.items()) if not k.endswith("_seconds"))
    print(f"\nfederated evaluation round (each site on its own held-out set, weighted by examples): {metrics}")
    print(f"federated run through the services: {fed_seconds:.0f} s; the three local trainings: {local_seconds:.0f} s")
    fed_union = rows["federated (A+B+C)"]["union map50"]
    beaten = all(fed_union > v["union map50"] for k, v in rows.items() if k.startswith("local"))
    print(f"federated union mAP@0.5 beats every local model: {'yes' if beaten else 'NO'}")
    return 0 if beaten else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        sys.exit(f"{e.code().name}: {e.details()}")
