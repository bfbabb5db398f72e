"""The distillation step alone: what one server-side distillation pass does to a FedPav average,
with the student in evaluation mode (fedstream's) or in training mode (the paper's).

In process, at fixed seeds on generated FedReID data: R rounds of FedPav (each site trains the
shared model with its own classifier for E epochs; the example-weighted mean of the shared
tensors is the next global model). The last round's site models are the teachers and its mean
the student. Prints, for each distillation learning rate and student mode, the evaluation-mode
embedding error against the teachers' mean on the public set, before and after, and the mean
Rank-1 / mAP over the sites' query/gallery splits.

Usage: python bench/fedreid_distill.py [--rounds 10] [--epochs 1] [--scale 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, TrainParams
from fedstream_tasks.reid import ReIDTask
from fedstream_tasks.reid.data import DEFAULT_SITES, SiteSpec, generate_sites

CPU = torch.device("cpu")


def mean_state(states: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    total = sum(n for _, n in states)
    out = {}
    for name, ref in states[0][0].items():
        acc = sum(s[name].to(torch.float64) * n for s, n in states) / total
        out[name] = acc.to(ref.dtype) if ref.is_floating_point() else torch.round(acc).to(ref.dtype)
    return out


def scores(task: ReIDTask, state: dict[str, torch.Tensor], heldout: dict) -> tuple[float, float]:
    model = task.shared_model(state)
    got = [task.evaluate(model, h, CPU) for h in heldout.values()]
    return statistics.fmean(g["rank1"] for g in got), statistics.fmean(g["map"] for g in got)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lrs", default="5e-4,5e-3", help="distillation learning rates (the paper's: 5e-4)")
    args = parser.parse_args()
    task = get_task("fedreid-tiny")
    assert isinstance(task, ReIDTask)
    workdir = Path(tempfile.mkdtemp(prefix="fedstream-distill-"))
    specs = tuple(SiteSpec(s.name, max(3, round(s.identities * args.scale)), s.cameras, s.images_per_camera)
                  for s in DEFAULT_SITES)
    sites, public_dir = generate_sites(workdir, seed=args.seed, sites=specs, public_images=128)
    public = task.load_public(public_dir)
    heldout = {s.name: task.load_heldout(SiteDataSettings(path=s)) for s in sites}
    data, classifiers = {}, {}
    for s in sites:
        data[s.name] = task.load_site(SiteDataSettings(path=s))
        classifiers[s.name] = {k: v for k, v in task.build_model(1).state_dict().items() if not task.is_shared(k)}
    global_state = {k: v for k, v in task.build_model(0).state_dict().items() if task.is_shared(k)}
    teachers: list[tuple[dict[str, torch.Tensor], int]] = []
    for r in range(args.rounds):
        teachers = []
        for s in sites:
            task.num_ids = classifiers[s.name]["classifier.weight"].shape[0]
            model = task.build_model(0)
            model.load_state_dict({**global_state, **classifiers[s.name]})
            result = task.train(model, data[s.name], TrainParams(args.epochs, 32, 0.05, args.seed + r), CPU)
            state = model.state_dict()
            classifiers[s.name] = {k: v.clone() for k, v in state.items() if not task.is_shared(k)}
            teachers.append(({k: v.clone() for k, v in state.items() if task.is_shared(k)}, result.num_examples))
        global_state = mean_state(teachers)
    r1, mp = scores(task, global_state, heldout)
    print(f"FedReID tiny, {len(sites)} sites, {args.rounds} FedPav rounds x {args.epochs} epochs, "
          f"{len(public)} public images. Reproduce: .venv/bin/python bench/fedreid_distill.py "
          f"--rounds {args.rounds} --epochs {args.epochs} --scale {args.scale} --seed {args.seed}")
    print("| distillation | embedding MSE before | after | mean Rank-1 | mean mAP |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| none (the FedPav average) | | | {r1:.3f} | {mp:.3f} |")
    for lr in (float(x) for x in args.lrs.split(",")):
        for mode in ("eval", "train"):
            out, fig = task.distill(global_state, [t for t, _ in teachers], public, lr, CPU, student_mode=mode)
            r1, mp = scores(task, out, heldout)
            print(f"| lr {lr:g}, student in {mode} mode | {fig['distill_mse_before']:.5f} | "
                  f"{fig['distill_mse_after']:.5f} | {r1:.3f} | {mp:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
