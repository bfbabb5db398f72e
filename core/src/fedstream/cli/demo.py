"""`fedstream demo`: a whole federation on this machine, on embedded defaults.

Starts the aggregator, the scheduler and N agents as separate processes on free loopback
ports, runs the digits task for a few rounds, prints each round's global accuracy on the
held-out split and each agent's example count, and stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from fedstream.grpcutil import channel
from fedstream.transfer import download_model
from fedstream.v1 import round_pb2, scheduler_pb2, scheduler_pb2_grpc


class Processes:
    """Child processes started by the demo, each logging to its own file; all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def wait_port(self, name: str, proc: subprocess.Popen[bytes], port_file: Path, timeout: float = 60) -> int:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if port_file.exists():
                return int(port_file.read_text())
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; see {self.workdir / (name + '.log')}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_demo(args: argparse.Namespace) -> int:
    from fedstream.tasks import get_task  # PyTorch: only the demo's evaluation needs it here
    from fedstream.tasks.base import SiteDataSettings, pick_device
    from fedstream.tasks.torchio import state_of

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedstream-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    print(f"fedstream demo: {args.agents} agents, {args.rounds} rounds, task digits; logs in {workdir}")
    try:
        agg_port_file = workdir / "aggregator.port"
        agg = procs.start("aggregator", "fedstream_aggregator", {
            "FEDSTREAM_AGGREGATOR_GRPC__HOST": "127.0.0.1",
            "FEDSTREAM_AGGREGATOR_GRPC__PORT": "0",
            "FEDSTREAM_AGGREGATOR_GRPC__PORT_FILE": str(agg_port_file),
            "FEDSTREAM_AGGREGATOR_STORE__PATH": str(workdir / "models"),
            "FEDSTREAM_AGGREGATOR_SPOOL_DIR": str(workdir / "spool"),
        })
        agg_addr = f"127.0.0.1:{procs.wait_port('aggregator', agg, agg_port_file)}"
        sched_port_file = workdir / "scheduler.port"
        sched = procs.start("scheduler", "fedstream_scheduler", {
            "FEDSTREAM_SCHEDULER_GRPC__HOST": "127.0.0.1",
            "FEDSTREAM_SCHEDULER_GRPC__PORT": "0",
            "FEDSTREAM_SCHEDULER_GRPC__PORT_FILE": str(sched_port_file),
            "FEDSTREAM_SCHEDULER_AGGREGATOR_ENDPOINT": agg_addr,
            "FEDSTREAM_SCHEDULER_HEARTBEAT_INTERVAL_S": "1",
            "FEDSTREAM_SCHEDULER_HEARTBEAT_TTL_S": "5",
        })
        sched_addr = f"127.0.0.1:{procs.wait_port('scheduler', sched, sched_port_file)}"
        print(f"aggregator on {agg_addr}, scheduler on {sched_addr}")
        for i in range(args.agents):
            procs.start(f"agent-{i}", "fedstream_agent", {
                "FEDSTREAM_AGENT_AGENT_ID": f"site-{i}",
                "FEDSTREAM_AGENT_SCHEDULER_ENDPOINT": sched_addr,
                "FEDSTREAM_AGENT_DATA__SITE_INDEX": str(i),
                "FEDSTREAM_AGENT_DATA__NUM_SITES": str(args.agents),
                "FEDSTREAM_AGENT_DATA__PARTITION_SEED": str(args.seed),
                "FEDSTREAM_AGENT_DEVICE": args.device,
                "FEDSTREAM_AGENT_CPU_THREADS": str(max(1, (os.cpu_count() or 1) // args.agents)),
            })
        runs = scheduler_pb2_grpc.RunServiceStub(channel(sched_addr))
        models = channel(agg_addr)
        task = get_task("digits")
        data_settings = SiteDataSettings(num_sites=args.agents, partition_seed=args.seed)
        heldout = task.load_heldout(data_settings)
        device = pick_device()
        print(f"held-out split: {task.num_examples(heldout)} images; waiting for agents to register")
        run = runs.StartRun(scheduler_pb2.StartRunRequest(spec=scheduler_pb2.RunSpec(
            task="digits",
            rounds=args.rounds,
            min_agents=args.agents,
            round_timeout_s=args.round_timeout,
            wait_for_agents_s=120,
            training=round_pb2.TrainingConfig(
                local_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed
            ),
        )), timeout=10)
        accuracy: dict[str, float] = {}

        def evaluate(r: scheduler_pb2.RoundInfo) -> str:
            model = task.build_model(0)
            model.load_state_dict(state_of(download_model(models, run.run_id, r.version).buffer))
            metrics = task.evaluate(model, heldout, device)
            accuracy[r.version] = metrics["accuracy"]
            return f"global accuracy {metrics['accuracy']:.4f}"

        from fedstream.cli.runs import RUN_STATE, RoundPrinter

        printer = RoundPrinter(total_rounds=args.rounds)
        final = run
        for final in runs.WatchRun(scheduler_pb2.GetRunRequest(run_id=run.run_id)):
            procs.check_alive()
            printer.update(final, evaluate)
        state = RUN_STATE[final.state]
        if final.state != scheduler_pb2.RUN_STATE_SUCCEEDED:
            print(f"run {final.run_id} {state}: {final.reason}")
            return 1
        acc = accuracy.get(final.latest_version, float("nan"))
        print(f"run {final.run_id} {state}: final model {final.latest_version}, "
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
    p.add_argument("--rounds", type=int, default=5, help="training rounds (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="local batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="local learning rate (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split and initialisation")
    p.add_argument("--round-timeout", type=float, default=120.0, help="seconds per round")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="agents' device")
    p.add_argument("--workdir", default="", help="directory for logs and models (default: a temp dir)")
    p.set_defaults(func=run_demo)
