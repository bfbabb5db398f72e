"""Accuracy (digits) and Rank-1 (the tiny re-ID preset) against epsilon under differential privacy.

User-level differential privacy hides each site among many: its noise is calibrated to one site's
clipped change, and the mean divides it by the sites counted per round. So the benchmark needs
many sites, more than one machine holds as processes: each site is simulated in this process
(its own shard of the data, the real task model and local training), and its change goes through
the real aggregator (fedstream_aggregator's AggregatorService in-process, a local model store):
the aggregator clips and noises in central mode; in local mode each site's change is clipped and
noised by the agent's own function before upload. Every round samples --per-round of --sites
sites uniformly without replacement; epsilon is the scheduler's accountant's for those rounds,
that sampling and --delta. For each target epsilon the noise multiplier is calibrated (by the
accountant) so that the run's --rounds rounds spend exactly that budget.

digits: FedAvg (every tensor shared), --sites equal random shards of the bundled digits set's training
split (100 sites: about 14 images each), accuracy on the held-out split. fedreid-tiny: FedPav (the backbone shared,
each site's identity classifier private and never noised), --sites generated Market-1501-layout
sites (nine identities, three cameras: six identities train, three form the site's
query/gallery split), Rank-1 on the first 30 sites' own splits (FedReID's protocol; the mean).

Usage: python bench/privacy.py [--tasks digits,fedreid-tiny] [--epsilons inf,32,8,2]
                               [--modes central,local] [--seeds 1] [--json FILE]
       python bench/privacy.py --quick    (digits, central, epsilons inf and 8, 4 rounds of 30 of 60 sites)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedstream.accounting import Charge, epsilon
from fedstream.privacy import DPMode, PrivacySpec
from fedstream.rounds import RoundKind, RoundPlan, TrainingConfig
from fedstream.state import MemoryStateStore
from fedstream.store import LocalModelStore
from fedstream.tensors import FlatBuffer, iter_chunks
from fedstream_agent.privacy import clip_and_noise
from fedstream_aggregator.ingest import UpdateHeader
from fedstream_aggregator.service import AggregatorService
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, Task, TrainParams
from fedstream_tasks.torchio import buffers_of, layout_of, state_of

MiB = 1 << 20


@dataclass(frozen=True)
class Sizing:
    task: str
    strategy: str
    metric: str
    rounds: int
    epochs: int
    batch_size: int
    lr: float
    clip_norm: float


TASKS = {
    "digits": Sizing("digits", "fedavg", "accuracy", rounds=15, epochs=2, batch_size=8, lr=0.05, clip_norm=1.0),
    "fedreid-tiny": Sizing("fedreid-tiny", "fedpav", "rank1", rounds=15, epochs=2, batch_size=16, lr=0.05,
                           clip_norm=1.0),
}


# Re-ID: the sites whose query/gallery splits are evaluated (the paper's protocol: each site's own).
HELDOUT_SITES = 30


class Sites:
    """The simulated sites of one task: data, and under FedPav each site's private tensors."""

    def __init__(self, task: Task, sizing: Sizing, count: int, workdir: Path, seed: int) -> None:
        self.task, self.sizing = task, sizing
        if sizing.task == "digits":
            from fedstream_tasks.digits import DigitsData

            whole = task.load_site(SiteDataSettings(partition_seed=seed))
            shards = np.array_split(np.random.default_rng(seed).permutation(len(whole.labels)), count)
            self.data = [DigitsData(whole.images[s], whole.labels[s]) for s in shards]
            self.heldout = [task.load_heldout(SiteDataSettings(partition_seed=seed))]
        else:
            from fedstream_tasks.reid.data import SiteSpec, generate_sites

            # Small sites: six training identities, three in each site's query/gallery split.
            train = tuple(SiteSpec(f"s{i:03d}", 9, 3, 3) for i in range(count))
            cfg = task.config  # type: ignore[attr-defined]
            paths, _ = generate_sites(workdir / "reid", seed=seed, sites=train, height=cfg.height, width=cfg.width,
                                      public_images=0)
            self.data = [task.load_site(SiteDataSettings(path=p)) for p in paths]
            self.heldout = [task.load_heldout(SiteDataSettings(path=p)) for p in paths[:HELDOUT_SITES]]
        self.private: dict[int, dict[str, torch.Tensor]] = {}

    def shared(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What travels: every tensor, or under FedPav the task's shared ones."""
        if self.sizing.strategy != "fedpav":
            return dict(state)
        return {k: v for k, v in state.items() if self.task.is_shared(k)}

    def train(self, site: int, global_state: dict[str, torch.Tensor], rnd: int, seed: int) -> tuple[dict[str, torch.Tensor], int]:
        """The site's change from the global shared tensors after local training, and its
        example count."""
        model = self.task.build_model(seed)
        model.load_state_dict({**model.state_dict(), **self.private.get(site, {}), **global_state})
        params = TrainParams(self.sizing.epochs, self.sizing.batch_size, self.sizing.lr, seed * 100_000 + rnd * 1000 + site,
                             mixed_precision=False)
        result = self.task.train(model, self.data[site], params, torch.device("cpu"))
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        travels = self.shared(state)
        self.private[site] = {k: v for k, v in state.items() if k not in travels}
        change = {k: (v - global_state[k]) if v.is_floating_point() else v for k, v in travels.items()}
        return change, result.num_examples

    def score(self, global_state: dict[str, torch.Tensor]) -> float:
        if self.sizing.task == "digits":
            model = self.task.build_model(0)
            model.load_state_dict(global_state)
        else:
            model = self.task.shared_model(global_state)  # type: ignore[attr-defined]
        return statistics.fmean(self.task.evaluate(model, h, torch.device("cpu"))[self.sizing.metric]
                                for h in self.heldout)


def run(sites: Sites, privacy: PrivacySpec | None, schedule: list[list[int]], seed: int, workdir: Path) -> list[float]:
    """One federated run through the in-process aggregator; the score after every round."""
    task, sizing = sites.task, sites.sizing
    store = LocalModelStore(workdir / "models", "bench")
    agg = AggregatorService(MemoryStateStore(), store, workdir / "spool", chunk_bytes=MiB)
    run_id = f"{sizing.task}-{privacy.mode.value if privacy else 'none'}-{seed}"
    state = sites.shared(task.build_model(seed).state_dict())
    layout = layout_of(state)
    version = f"{run_id}/000000"
    with store.writer(version, layout, {}) as w:
        for view in buffers_of(layout, state):
            w.write(view)
        w.commit()
    scores = []
    try:
        for rnd, chosen in enumerate(schedule, start=1):
            names = tuple(f"site-{i}" for i in chosen)
            agg.open_round(RoundPlan(run_id, rnd, RoundKind.TRAIN, version, names, len(names), time.time() + 3600,
                                     sizing.strategy, "{}", privacy=privacy))
            for i, name in zip(chosen, names, strict=True):
                change, examples = sites.train(i, state, rnd, seed)
                if privacy is None:  # no privacy: weights travel, not changes
                    change = {k: v + state[k] if v.is_floating_point() else v for k, v in change.items()}
                elif privacy.mode is DPMode.LOCAL:
                    change = clip_and_noise(TrainingConfig(privacy=privacy), change)
                up = layout_of(change)
                chunks = [(c.offset, bytes(c.data), c.crc32c) for c in iter_chunks(up, list(buffers_of(up, change)))]
                agg.receive_update(UpdateHeader(run_id, rnd, name, up, examples, {}), iter(chunks))
            snap = wait_committed(agg, run_id, rnd)
            version = snap.version
            state = read_version(store, version)
            scores.append(sites.score(state))
            print(f"  round {rnd}: {sizing.metric} {scores[-1]:.4f}", file=sys.stderr)
    finally:
        agg.close()
    return scores


def read_version(store: LocalModelStore, version: str) -> dict[str, torch.Tensor]:
    with store.open(version) as reader:
        buf = FlatBuffer(reader.layout)
        for c in reader.iter_chunks(MiB):
            buf.write(c.offset, c.data)
    return state_of(buf)


def wait_committed(agg: AggregatorService, run_id: str, rnd: int) -> Any:
    while (snap := agg.snapshot(run_id, rnd)).state not in ("committed", "failed"):
        time.sleep(0.01)
    if snap.state != "committed":
        raise RuntimeError(f"round {rnd} of {run_id} failed: {snap.reason}")
    return snap


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="digits,fedreid-tiny", help="comma-separated: digits, fedreid-tiny")
    p.add_argument("--modes", default="central,local", help="comma-separated: central, local")
    p.add_argument("--epsilons", default="inf,32,8,2", help="target budgets; inf: no differential privacy")
    p.add_argument("--sites", type=int, default=300, help="simulated sites (users)")
    p.add_argument("--per-round", type=int, default=150, help="sites sampled per round")
    p.add_argument("--delta", type=float, default=1e-3, help="the federation's delta (below 1/sites)")
    p.add_argument("--rounds", type=int, default=0, help="rounds per run (0: the task's default)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--quick", action="store_true", help="digits, central, epsilons inf and 8, 4 rounds, 60 sites, 30 per round")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.modes, args.epsilons, args.rounds = "digits", "central", "inf,8", 4
        args.sites, args.per_round = 60, 30
    return args


def schedule_of(args: argparse.Namespace, rounds: int, seed: int) -> list[list[int]]:
    """The sites each round samples (uniformly without replacement, as the scheduler does)."""
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(args.sites, size=args.per_round, replace=False).tolist()) for _ in range(rounds)]


def ledger(mode: DPMode, z: float, schedule: list[list[int]], sites: int) -> list[Charge]:
    """The charges the scheduler would record for these rounds."""
    return [Charge("bench", r, mode, z, len(chosen), sites, tuple(f"site-{i}" for i in chosen))
            for r, chosen in enumerate(schedule, start=1)]


def calibrated(sizing: Sizing, mode: str, target: float, schedule: list[list[int]], args: argparse.Namespace) -> PrivacySpec | None:
    """The privacy settings whose rounds spend ``target`` (the noise multiplier found by
    bisection on the accountant's epsilon; None: no privacy)."""
    if math.isinf(target):
        return None
    low, high = 0.05, 500.0
    for _ in range(40):
        z = math.sqrt(low * high)
        if epsilon(ledger(DPMode(mode), z, schedule, args.sites), args.delta) > target:
            low = z
        else:
            high = z
    return PrivacySpec(DPMode(mode), sizing.clip_norm, high, target * 1.0001, args.delta).check()


def main() -> int:
    args = parse()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    figures: list[dict[str, Any]] = []
    command = ".venv/bin/python bench/privacy.py " + " ".join(sys.argv[1:])
    for name in args.tasks.split(","):
        sizing = TASKS[name]
        if args.rounds:
            sizing = Sizing(**{**sizing.__dict__, "rounds": args.rounds})
        task = get_task(name)
        for mode in args.modes.split(","):
            for target in epsilons:
                if math.isinf(target) and mode != args.modes.split(",")[0]:
                    continue  # the baseline without privacy runs once per task
                finals, spent, zs = [], [], []
                started = time.perf_counter()
                for seed in range(args.seeds):
                    schedule = schedule_of(args, sizing.rounds, seed)
                    spec = calibrated(sizing, mode, target, schedule, args)
                    with tempfile.TemporaryDirectory() as tmp:
                        torch.manual_seed(seed)
                        sites = Sites(task, sizing, args.sites, Path(tmp), seed)
                        finals.append(run(sites, spec, schedule, seed, Path(tmp))[-1])
                    zs.append(spec.noise_multiplier if spec else 0.0)
                    spent.append(epsilon(ledger(spec.mode, spec.noise_multiplier, schedule, args.sites), args.delta)
                                 if spec else math.inf)
                row = {
                    "task": name, "mode": mode if not math.isinf(target) else "none", "target_epsilon": target,
                    "noise_multiplier": statistics.fmean(zs), "epsilon_spent": max(spent),
                    "metric": sizing.metric, "final": statistics.fmean(finals), "finals": finals,
                    "rounds": sizing.rounds, "seconds": time.perf_counter() - started,
                }
                figures.append(row)
                print(f"{name:13s} {row['mode']:8s} eps {target:>5g}: z {row['noise_multiplier']:.3f}, "
                      f"spent {row['epsilon_spent']:.3f}, {sizing.metric} {row['final']:.4f} "
                      f"({row['seconds']:.0f} s)", flush=True)
    print(f"reproduce with: {command}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
