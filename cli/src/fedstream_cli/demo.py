"""`fedstream demo`: a whole federation on this machine, on embedded defaults.

Starts the aggregator (with ``--leaves``, a root and its leaf aggregators), the scheduler and N agents as separate processes on free loopback
ports, runs the digits task for a few rounds, prints each round's global accuracy on the
held-out split and each agent's example count, and stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import grpc

from fedstream.convert import run_state_from_proto
from fedstream.rounds import RunState
from fedstream.transfer import download_model
from fedstream.v1 import scheduler_pb2, scheduler_pb2_grpc
from fedstream_cli.dev_grpc import RoundPrinter, ended, run_spec, watch
from fedstream_cli.runspec import add_spec_arguments, spec_from_args
from fedstream_testing.local import LocalFederation


def _start_processes(procs: LocalFederation, args: argparse.Namespace) -> tuple[str, str]:
    """Starts the aggregator (with its leaves), the scheduler and the agents; returns the
    aggregator's and the scheduler's addresses."""
    leaves = [procs.start_aggregator({"NAME": f"leaf-{i}"}, name=f"leaf-{i}") for i in range(args.leaves)]
    root = {"LEAVES": json.dumps([{"endpoint": a} for a in leaves])} if leaves else {}
    agg_addr = procs.start_aggregator(root)
    if leaves:
        print(f"leaf aggregators on {', '.join(leaves)}")
    sched_addr = procs.start_scheduler(agg_addr, {"HEARTBEAT_INTERVAL_S": "1", "HEARTBEAT_TTL_S": "5"})
    print(f"aggregator on {agg_addr}, scheduler on {sched_addr}")
    threads = max(1, (os.cpu_count() or 1) // args.agents)
    for i in range(args.agents):
        procs.start_agent(f"site-{i}", sched_addr, i, args.agents, {
            "DATA__PARTITION_SEED": str(args.seed),
            "DEVICE": args.device,
            "CPU_THREADS": str(threads),
        })
    return agg_addr, sched_addr


def run_demo(args: argparse.Namespace) -> int:
    from fedstream_tasks import get_task  # PyTorch: only the demo's evaluation needs it here
    from fedstream_tasks.base import SiteDataSettings, pick_device
    from fedstream_tasks.torchio import state_of

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedstream-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs = LocalFederation(workdir)
    print(f"fedstream demo: {args.agents} agents, {args.rounds} rounds, task digits; logs in {workdir}")
    try:
        agg_addr, sched_addr = _start_processes(procs, args)
        runs = scheduler_pb2_grpc.RunServiceStub(procs.channel(sched_addr))
        models = procs.channel(agg_addr)
        task = get_task("digits")
        data_settings = SiteDataSettings(num_sites=args.agents, partition_seed=args.seed)
        heldout = task.load_heldout(data_settings)
        device = pick_device()
        print(f"held-out split: {task.num_examples(heldout)} images; waiting for agents to register")
        spec = {**spec_from_args(args), "task": "digits", "min_agents": args.agents, "wait_for_agents_s": 120}
        run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=run_spec(spec)), timeout=10)
        accuracy: dict[str, float] = {}

        def evaluate(r: scheduler_pb2.RoundInfo) -> str:
            model = task.build_model(0)
            model.load_state_dict(state_of(download_model(models, run.run_id, r.version).buffer))
            metrics = task.evaluate(model, heldout, device)
            accuracy[r.version] = metrics["accuracy"]
            return f"global accuracy {metrics['accuracy']:.4f}"

        final = watch(runs, run.run_id, RoundPrinter(total_rounds=args.rounds), evaluate, procs.check_alive)
        if run_state_from_proto(final.state) != RunState.SUCCEEDED:
            print(f"{ended(final)}")
            return 1
        acc = accuracy.get(final.latest_version, float("nan"))
        print(f"{ended(final)}: final model {final.latest_version}, "
              f"held-out accuracy {acc:.4f} after {args.rounds} rounds")
        return 0
    except (grpc.RpcError, RuntimeError) as e:
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        print(f"demo failed: {detail}", file=sys.stderr)
        return 1
    finally:
        procs.stop()
        print("stopped all demo processes")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run a whole federation on this machine (no servers needed)")
    p.add_argument("--agents", type=int, default=3, help="number of client agents (default 3)")
    add_spec_arguments(p, only=("rounds", "epochs", "batch_size", "lr", "seed", "round_timeout"))
    p.set_defaults(rounds=5, epochs=2, round_timeout=120.0)
    p.add_argument("--leaves", type=int, default=0,
                   help="hierarchical aggregation: this many leaf aggregators fold the updates and "
                   "the aggregator adds their sums (default 0: one aggregator)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="agents' device")
    p.add_argument("--workdir", default="", help="directory for logs and models (default: a temp dir)")
    p.set_defaults(func=run_demo)
