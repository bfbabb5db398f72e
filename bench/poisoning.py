"""Poisoned updates against the strategies: honest digits agents and a minority of attackers
through the services; the global model's accuracy on the digits held-out set after R rounds.

Five honest agents (processes, a Dirichlet slice of the digits each) train; two attackers
speak the real protocol (fedstream_testing.sim_agent), claim 300 training examples each and upload,
from the model they were sent, one of:
  scaled      every floating weight x 20
  sign-flip   every floating weight x -4
  nan         NaN weights (refused at ingest: the round goes on without them)
Configurations: FedAvg with no attacker (the clean reference), then each attack against
FedAvg, coordinate-wise median, trimmed mean (beta 0.3) and multi-Krum (f 2).

Usage: python bench/poisoning.py [--rounds 4] [--attacks scaled,sign-flip,nan] [--strategies ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedstream.rounds import Assignment
from fedstream.tensors import FlatBuffer
from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2
from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings
from fedstream_tasks.torchio import TORCH_DTYPES as TORCH_NAMES
from fedstream_tasks.torchio import state_of
from fedstream_testing.local import LocalFederation
from fedstream_testing.sim_agent import SimAgent

HONEST, ATTACKERS = 5, 2
STRATEGIES = {
    "fedavg": {},
    "median": {},
    "trimmed-mean": {"beta": 0.3},
    "multi-krum": {"f": 2},
}


def attack(kind: str):
    def fn(base: FlatBuffer, _: object) -> FlatBuffer:
        out = FlatBuffer(base.layout)
        out.data[:] = base.data
        for arr in out.arrays().values():
            if arr.dtype == np.float32:
                if kind == "scaled":
                    arr *= np.float32(20)
                elif kind == "sign-flip":
                    arr *= np.float32(-4)
                else:
                    arr[...] = np.float32("nan")
        return out

    return fn


def digits_init(a: Assignment) -> dict[str, tuple[str, np.ndarray]]:
    """The initial model an honest agent would upload (the task's, at the run's seed): an
    attacker chosen for the init round does not change the starting point."""
    model = get_task("digits").build_model(a.training.seed)
    return {k: (TORCH_NAMES[v.dtype], v.detach().numpy()) for k, v in model.state_dict().items()}


def run(strategy: str, attack_kind: str, args: argparse.Namespace, workdir: Path) -> tuple[float, int, str]:
    """The final model's held-out accuracy, how many attacker uploads were refused, and why the
    run failed ("" when it succeeded: a poisoned FedAvg model can diverge until honest agents'
    own updates turn non-finite and are refused, and the run fails; its latest model counts)."""
    task = get_task("digits")
    with LocalFederation(workdir) as fed:
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for i in range(HONEST):
            fed.start_agent(f"honest-{i}", sched, i, HONEST, {"DEVICE": "cpu", "CPU_THREADS": "1"})
        attackers = []
        if attack_kind != "none":
            # Attackers are enrolled agents like any other: TLS authenticates, it does not vouch.
            attackers = [SimAgent(f"attacker-{i}", sched, examples=300, update=attack(attack_kind), init=digits_init,
                                  identity=fed.enroll(sched, f"attacker-{i}")).start()
                         for i in range(ATTACKERS)]
        try:
            strat = round_pb2.StrategySpec(name=strategy)
            strat.params.update(STRATEGIES[strategy])
            agents = HONEST + len(attackers)
            spec = scheduler_pb2.RunSpec(
                # Refused attackers never report: a round then closes at its deadline with the honest
                # updates, so the deadline is short (honest digits training takes a few seconds).
                task="digits", rounds=args.rounds, min_agents=agents, round_timeout_s=args.round_timeout,
                wait_for_agents_s=120,
                min_updates=HONEST, strategy=strat,
                training=round_pb2.TrainingConfig(local_epochs=args.epochs, seed=args.seed),
            )
            final = fed.run(sched, spec, "poison", f"{strategy} / {attack_kind}")
            failed = "" if final.state == scheduler_pb2.RUN_STATE_SUCCEEDED else final.reason
            if not final.latest_version:
                raise SystemExit(f"{strategy} / {attack_kind}: no model: {final.reason}\n{fed.tail('aggregator')}")
            model = task.build_model(0)
            model.load_state_dict(state_of(download_model(fed.channel(agg), final.run_id, final.latest_version).buffer))
        finally:
            for a in attackers:
                a.stop()
        refused = sum(1 for a in attackers for e in a.errors if "INVALID_ARGUMENT" in e)
    heldout = task.load_heldout(SiteDataSettings())
    return task.evaluate(model, heldout, torch.device("cpu"))["accuracy"], refused, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-timeout", type=float, default=15.0, help="seconds")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", default="scaled,sign-flip,nan")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fedstream-poisoning-"))
    torch.set_num_threads(1)
    started = time.perf_counter()
    clean, _, why = run("fedavg", "none", args, workdir / "clean")
    if why:
        raise SystemExit(f"the clean run failed: {why}")
    print(f"clean FedAvg: accuracy {clean:.4f}", file=sys.stderr)
    attacks = [a for a in args.attacks.split(",") if a]
    strategies = [s for s in args.strategies.split(",") if s]
    table: dict[str, dict[str, tuple[float, int, str]]] = {}
    for s in strategies:
        for a in attacks:
            table.setdefault(s, {})[a] = run(s, a, args, workdir / f"{s}-{a}")
            print(f"{s} / {a}: accuracy {table[s][a][0]:.4f}", file=sys.stderr)
    print(f"Digits, {HONEST} honest agents + {ATTACKERS} attackers (300 claimed examples each), {args.rounds} rounds "
          f"x {args.epochs} epoch; held-out accuracy of the final model (clean FedAvg: {clean:.4f}). "
          f"Reproduce: .venv/bin/python bench/poisoning.py --rounds {args.rounds} --seed {args.seed}")
    print(f"| strategy | {' | '.join(attacks)} |")
    print(f"| --- |{' --- |' * len(attacks)}")
    for s, row in table.items():
        cells = []
        for a in attacks:
            acc, refused, failed = row[a]
            mark = "" if abs(acc - clean) <= 0.02 else " (more than 2 points off)"
            cells.append(f"{acc:.4f}{mark}" + (f", {refused} uploads refused" if refused else "")
                         + (f"; run failed: {failed}" if failed else ""))
        print(f"| {s} | {' | '.join(cells)} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"clean": clean, "table": table}))
    robust = [table[s][a][0] for s in strategies if s != "fedavg" for a in attacks]
    print(f"\nrobust strategies within 2 points of clean: {sum(abs(x - clean) <= 0.02 for x in robust)}/{len(robust)}; "
          f"worst {min(robust, default=float('nan')):.4f}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
