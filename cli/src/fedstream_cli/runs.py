"""`fedstream run ...` and `fedstream model ...`: start and follow runs, download models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

from fedstream.dialing import add_identity_arguments, dial
from fedstream.safetensors_io import encode_header
from fedstream.tensors import ChunkReceiver, Layout
from fedstream.transfer import download_call
from fedstream.v1 import aggregator_pb2, round_pb2, scheduler_pb2, scheduler_pb2_grpc

ROUND_STATE = {v: k.removeprefix("ROUND_STATE_").lower() for k, v in round_pb2.RoundState.items()}
RUN_STATE = {v: k.removeprefix("RUN_STATE_").lower() for k, v in scheduler_pb2.RunState.items()}
KIND = {v: k.removeprefix("ROUND_KIND_").lower() for k, v in round_pb2.RoundKind.items()}


class RoundPrinter:
    """Prints a run's progress as it changes: one line per round event, never repeated."""

    def __init__(self, out: Callable[[str], None] = print, total_rounds: int = 0) -> None:
        self.out = out
        self.total = total_rounds
        self._seen: dict[tuple[int, str, int], bool] = {}

    def update(self, run: scheduler_pb2.Run, on_commit: Callable[[scheduler_pb2.RoundInfo], str] | None = None) -> None:
        for r in run.rounds:
            state = ROUND_STATE[r.state]
            key = (r.round, state, len(r.reports))
            if key in self._seen:
                continue
            self._seen[key] = True
            evaluation = r.kind == round_pb2.ROUND_KIND_EVALUATE
            label = "init" if r.kind == round_pb2.ROUND_KIND_INIT else f"round {r.round}"
            if r.kind == round_pb2.ROUND_KIND_TRAIN:
                nth = sum(x.kind == round_pb2.ROUND_KIND_TRAIN and x.round <= r.round for x in run.rounds)
                of = f"/{self.total}" if self.total else ""
                label += of if nth == r.round else f" (training {nth}{of})"
            if evaluation:
                label += f" (evaluation of {r.base_version})"
            if state == "training" and not r.reports:
                self.out(f"{label}: {'evaluating' if evaluation else 'training'} on {', '.join(r.participants)}")
            elif state == "training":
                self.out(f"{label}: {len(r.reports)}/{len(r.participants)} {'reports' if evaluation else 'updates'} in")
            elif state == "committed" and evaluation:
                metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r.metrics.items()) if not k.endswith("_seconds"))
                agents = "  ".join(f"{rep.agent_id}:{rep.num_examples}" for rep in r.reports)
                self.out(f"{label}: {metrics}  examples {agents}")
            elif state == "committed":
                took = r.finished_unix - r.started_unix
                agents = "  ".join(f"{rep.agent_id}:{rep.num_examples}" for rep in r.reports)
                extra = on_commit(r) if on_commit else ""
                line = f"{label}: committed {r.version} in {took:.1f} s"
                if r.kind != round_pb2.ROUND_KIND_INIT:
                    line += f"  examples {agents}"
                if r.stragglers:
                    line += f"  stragglers {', '.join(r.stragglers)}"
                self.out(line + (f"  {extra}" if extra else ""))
            elif state == "failed":
                self.out(f"{label}: failed: {r.reason}")


def _strategy_from_args(args: argparse.Namespace) -> round_pb2.StrategySpec:
    params = struct_pb2.Struct()
    for item in args.strategy_param:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--strategy-param takes KEY=VALUE, got {item!r}")
        try:
            params.update({key: json.loads(value)})
        except json.JSONDecodeError:
            params.update({key: value})
    return round_pb2.StrategySpec(name=args.strategy, params=params)


def _spec_from_args(args: argparse.Namespace) -> scheduler_pb2.RunSpec:
    return scheduler_pb2.RunSpec(
        strategy=_strategy_from_args(args),
        task=args.task,
        rounds=args.rounds,
        min_agents=args.min_agents,
        max_agents=args.max_agents,
        round_timeout_s=args.round_timeout,
        training=round_pb2.TrainingConfig(
            local_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
            compression=args.compression,
        ),
        initial_version=args.initial_version,
        wait_for_agents_s=args.wait_for_agents,
        evaluate_every=args.evaluate_every,
        evaluate_only=args.evaluate_only,
    )


def follow(stub: scheduler_pb2_grpc.RunServiceStub, run_id: str, total_rounds: int = 0) -> scheduler_pb2.Run:
    printer = RoundPrinter(total_rounds=total_rounds)
    last = None
    for run in stub.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id)):
        printer.update(run)
        last = run
    assert last is not None
    return last


def _fail(e: grpc.RpcError) -> int:
    print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1


def cmd_run_start(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = stub.StartRun(scheduler_pb2.StartRunRequest(spec=_spec_from_args(args), run_id=args.run_id), timeout=10)
        print(f"run {run.run_id} started")
        if args.follow:
            run = follow(stub, run.run_id, args.rounds)
            print(f"run {run.run_id} {RUN_STATE[run.state]}{': ' + run.reason if run.reason else ''}"
                  f"; latest model {run.latest_version or '-'}")
            return 0 if run.state == scheduler_pb2.RUN_STATE_SUCCEEDED else 1
    except grpc.RpcError as e:
        return _fail(e)
    return 0


def cmd_run_get(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = stub.GetRun(scheduler_pb2.GetRunRequest(run_id=args.run_id), timeout=10)
    except grpc.RpcError as e:
        return _fail(e)
    print(json.dumps(json_format.MessageToDict(run, preserving_proto_field_name=True), indent=2))
    return 0


def cmd_run_watch(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = follow(stub, args.run_id)
    except grpc.RpcError as e:
        return _fail(e)
    print(f"run {run.run_id} {RUN_STATE[run.state]}; latest model {run.latest_version or '-'}")
    return 0 if run.state == scheduler_pb2.RUN_STATE_SUCCEEDED else 1


def cmd_model_download(args: argparse.Namespace) -> int:
    """Streams a version into a safetensors file, verifying every chunk on the way."""
    call = download_call(dial(args, args.aggregator))
    out = Path(args.output)
    tmp = out.with_name(out.name + ".part")
    try:
        responses = call(aggregator_pb2.DownloadModelRequest(run_id=args.run_id, version=args.version))
        first = next(responses)
        layout = Layout.from_proto(first.header.layout)
        started = time.perf_counter()
        with tmp.open("wb") as f:
            f.write(encode_header(layout, dict(first.header.metadata)))
            receiver = ChunkReceiver(layout, lambda _offset, data: f.write(data))
            for msg in responses:
                receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
                pct = 100 * receiver.received // max(layout.total_bytes, 1)
                print(f"\r{first.header.version}: {receiver.received >> 20} / {layout.total_bytes >> 20} MiB ({pct}%)", end="", file=sys.stderr)
            receiver.finish()
        tmp.replace(out)
        took = time.perf_counter() - started
        print(f"\nwrote {out} ({first.header.version}, {layout.total_bytes} bytes, {took:.1f} s)", file=sys.stderr)
    except grpc.RpcError as e:
        tmp.unlink(missing_ok=True)
        return _fail(e)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="start, inspect and follow runs").add_subparsers(dest="run_command", required=True)
    start = run.add_parser("start", help="start a run on a scheduler")
    start.add_argument("--scheduler", default="localhost:50051", help="scheduler host:port")
    start.add_argument("--task", default="digits", help="task name (default: digits)")
    start.add_argument("--rounds", type=int, default=5, help="training rounds to commit")
    start.add_argument("--min-agents", type=int, default=1, help="agents needed before a round opens")
    start.add_argument("--max-agents", type=int, default=0, help="agents per round (0: all alive)")
    start.add_argument("--round-timeout", type=float, default=300.0, help="seconds per round")
    start.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    start.add_argument("--batch-size", type=int, default=32, help="local batch size")
    start.add_argument("--lr", type=float, default=0.05, help="local learning rate")
    start.add_argument("--seed", type=int, default=0, help="seed for initialisation and selection")
    start.add_argument("--strategy", default="fedavg",
                       help="aggregation strategy: fedavg, uniform, fedprox, fedpav, cosine, fedadagrad, fedyogi, fedadam, "
                       "median, trimmed-mean, multi-krum")
    start.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE",
                       help="a strategy parameter, e.g. mu=0.01 or eta=0.1 (repeatable)")
    start.add_argument("--compression", default="none", choices=["none", "float16", "bfloat16", "int8"],
                       help="how updates travel (default: none)")
    start.add_argument("--initial-version", default="", help="start from this model version")
    start.add_argument("--evaluate-every", type=int, default=0, metavar="N",
                       help="federated evaluation of the new version after every N training rounds and "
                       "after the last (default 0: never)")
    start.add_argument("--evaluate-only", action="store_true",
                       help="train nothing: one federated evaluation of --initial-version")
    start.add_argument("--wait-for-agents", type=float, default=60.0, help="seconds to wait for agents")
    start.add_argument("--run-id", default="", help="id of the new run (default: generated)")
    start.add_argument("--follow", action="store_true", help="print progress until the run ends")
    add_identity_arguments(start)
    start.set_defaults(func=cmd_run_start)
    get = run.add_parser("get", help="print a run as JSON")
    get.add_argument("run_id")
    get.add_argument("--scheduler", default="localhost:50051", help="scheduler host:port")
    add_identity_arguments(get)
    get.set_defaults(func=cmd_run_get)
    watch = run.add_parser("watch", help="print a run's progress until it ends")
    watch.add_argument("run_id")
    watch.add_argument("--scheduler", default="localhost:50051", help="scheduler host:port")
    add_identity_arguments(watch)
    watch.set_defaults(func=cmd_run_watch)
    model = sub.add_parser("model", help="model versions").add_subparsers(dest="model_command", required=True)
    dl = model.add_parser("download", help="download a model version as a safetensors file")
    dl.add_argument("run_id")
    dl.add_argument("--version", default="", help="version id (default: the run's latest)")
    dl.add_argument("--aggregator", default="localhost:50052", help="aggregator host:port")
    dl.add_argument("-o", "--output", required=True, help="file to write")
    add_identity_arguments(dl)
    dl.set_defaults(func=cmd_model_download)
