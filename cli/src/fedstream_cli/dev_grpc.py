"""`fedstream grpc ...`: development commands that speak gRPC straight to the scheduler and the
aggregator with an operator certificate (or --plaintext): ad-hoc runs, a run as the scheduler
holds it, verified model streams. Operators use the admin API commands instead."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from fedstream.convert import kind_from_proto, run_state_from_proto, state_from_proto
from fedstream.dialing import add_identity_arguments, dial
from fedstream.rounds import RoundKind, RoundState, RunState
from fedstream.safetensors_io import encode_header
from fedstream.tensors import ChunkReceiver, Layout
from fedstream.transfer import download_call
from fedstream.v1 import aggregator_pb2, scheduler_pb2, scheduler_pb2_grpc
from fedstream_cli.runspec import add_spec_arguments, spec_from_args


def run_spec(spec: dict[str, Any]) -> scheduler_pb2.RunSpec:
    """The gRPC RunSpec of an admin-API run spec (the fields are the same)."""
    message = scheduler_pb2.RunSpec()
    json_format.ParseDict(spec, message)
    return message


def _label(run: scheduler_pb2.Run, r: scheduler_pb2.RoundInfo, kind: RoundKind, total: int) -> str:
    if kind == RoundKind.INIT:
        return "init"
    label = f"round {r.round}"
    if kind == RoundKind.TRAIN:
        nth = sum(kind_from_proto(x.kind) == RoundKind.TRAIN and x.round <= r.round for x in run.rounds)
        of = f"/{total}" if total else ""
        label += of if nth == r.round else f" (training {nth}{of})"
    if kind == RoundKind.EVALUATE:
        label += f" (evaluation of {r.base_version})"
    return label


class RoundPrinter:
    """Prints a run's progress as it changes: one line per round event, never repeated."""

    def __init__(self, out: Callable[[str], None] = print, total_rounds: int = 0) -> None:
        self.out = out
        self.total = total_rounds
        self._seen: set[tuple[int, str, int]] = set()
        self._counted: dict[int, int] = {}  # round -> the update count last printed

    def update(self, run: scheduler_pb2.Run, on_commit: Callable[[scheduler_pb2.RoundInfo], str] | None = None) -> None:
        """Prints what changed since the last call. The scheduler batches reports, so a round
        may end before every update was shown coming in: its final count is printed before
        its end, so that no update looks missing (``3/3 updates in``, then ``committed``)."""
        for r in run.rounds:
            state = state_from_proto(r.state)
            ended = state not in (RoundState.OPEN, RoundState.TRAINING)
            if ended and r.reports and self._counted.get(r.round, 0) < len(r.reports):
                self._emit(run, r, RoundState.TRAINING, on_commit)
            self._emit(run, r, state, on_commit)

    def _emit(self, run: scheduler_pb2.Run, r: scheduler_pb2.RoundInfo, state: RoundState,
              on_commit: Callable[[scheduler_pb2.RoundInfo], str] | None) -> None:
        key = (r.round, str(state), len(r.reports))
        if key in self._seen:
            return
        self._seen.add(key)
        if state == RoundState.TRAINING:
            self._counted[r.round] = len(r.reports)
        line = self._line(run, r, state, on_commit)
        if line:
            self.out(line)

    def _line(self, run: scheduler_pb2.Run, r: scheduler_pb2.RoundInfo, state: RoundState,
              on_commit: Callable[[scheduler_pb2.RoundInfo], str] | None) -> str:
        kind = kind_from_proto(r.kind)
        evaluation = kind == RoundKind.EVALUATE
        label = _label(run, r, kind, self.total)
        agents = "  ".join(f"{rep.agent_id}:{rep.num_examples}" for rep in r.reports)
        if state == RoundState.TRAINING and not r.reports:
            return f"{label}: {'evaluating' if evaluation else 'training'} on {', '.join(r.participants)}"
        if state == RoundState.TRAINING:
            return f"{label}: {len(r.reports)}/{len(r.participants)} {'reports' if evaluation else 'updates'} in"
        if state == RoundState.COMMITTED and evaluation:
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r.metrics.items()) if not k.endswith("_seconds"))
            return f"{label}: {metrics}  examples {agents}"
        if state == RoundState.COMMITTED:
            line = f"{label}: committed {r.version} in {r.finished_unix - r.started_unix:.1f} s"
            if kind != RoundKind.INIT:
                line += f"  examples {agents}"
            if r.stragglers:
                line += f"  stragglers {', '.join(r.stragglers)}"
            extra = on_commit(r) if on_commit else ""
            return line + (f"  {extra}" if extra else "")
        if state == RoundState.FAILED:
            return f"{label}: failed: {r.reason}"
        return ""


def watch(stub: scheduler_pb2_grpc.RunServiceStub, run_id: str, printer: RoundPrinter,
          on_commit: Callable[[scheduler_pb2.RoundInfo], str] | None = None,
          each: Callable[[], None] = lambda: None) -> scheduler_pb2.Run:
    """Prints a run's rounds as the scheduler streams them (``each`` is called on every update); returns the run as it ended."""
    last: scheduler_pb2.Run | None = None
    for run in stub.WatchRun(scheduler_pb2.GetRunRequest(run_id=run_id)):
        each()
        printer.update(run, on_commit)
        last = run
    assert last is not None
    return last


def ended(run: scheduler_pb2.Run) -> str:
    """``run ID STATE[: reason]``."""
    return f"run {run.run_id} {run_state_from_proto(run.state)}{': ' + run.reason if run.reason else ''}"


def _fail(e: grpc.RpcError, service: str = "", address: str = "") -> int:
    """Prints the refusal; one the ``service`` at ``address`` could not be reached says which
    option names another address."""
    print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
    if e.code() == grpc.StatusCode.UNAVAILABLE and service:
        print(f"the {service} is not reachable at {address}: is it running there? Another address: "
              f"--{service} HOST:PORT", file=sys.stderr)
    return 1


def cmd_run_start(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = stub.StartRun(scheduler_pb2.StartRunRequest(spec=run_spec(spec_from_args(args)), run_id=args.run_id),
                            timeout=10)
        print(f"run {run.run_id} started")
        if args.follow:
            run = watch(stub, run.run_id, RoundPrinter(total_rounds=args.rounds))
            print(f"{ended(run)}; latest model {run.latest_version or '-'}")
            return 0 if run_state_from_proto(run.state) == RunState.SUCCEEDED else 1
    except grpc.RpcError as e:
        return _fail(e, "scheduler", args.scheduler)
    return 0


def cmd_run_get(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = stub.GetRun(scheduler_pb2.GetRunRequest(run_id=args.run_id), timeout=10)
    except grpc.RpcError as e:
        return _fail(e, "scheduler", args.scheduler)
    print(json.dumps(json_format.MessageToDict(run, preserving_proto_field_name=True), indent=2))
    return 0


def cmd_run_watch(args: argparse.Namespace) -> int:
    stub = scheduler_pb2_grpc.RunServiceStub(dial(args, args.scheduler))
    try:
        run = watch(stub, args.run_id, RoundPrinter())
    except grpc.RpcError as e:
        return _fail(e, "scheduler", args.scheduler)
    print(f"run {run.run_id} {run_state_from_proto(run.state)}; latest model {run.latest_version or '-'}")
    return 0 if run_state_from_proto(run.state) == RunState.SUCCEEDED else 1


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

            def write(_offset: int, data: bytes | memoryview) -> None:
                f.write(data)

            receiver = ChunkReceiver(layout, write)
            for msg in responses:
                receiver.accept(msg.chunk.offset, msg.chunk.data, msg.chunk.crc32c)
                pct = 100 * receiver.received // max(layout.total_bytes, 1)
                print(f"\r{first.header.version}: {receiver.received >> 20} / {layout.total_bytes >> 20} MiB ({pct}%)",
                      end="", file=sys.stderr)
            receiver.finish()
        tmp.replace(out)
        took = time.perf_counter() - started
        print(f"\nwrote {out} ({first.header.version}, {layout.total_bytes} bytes, {took:.1f} s)", file=sys.stderr)
    except grpc.RpcError as e:
        tmp.unlink(missing_ok=True)
        return _fail(e, "aggregator", args.aggregator)
    return 0


def _endpoint(p: argparse.ArgumentParser, service: str, default: str) -> None:
    p.add_argument(f"--{service}", default=default, metavar="HOST:PORT", help=f"the {service}'s gRPC address (default: {default})")
    add_identity_arguments(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser(
        "grpc", help="development: runs and models over gRPC with a certificate (no admin API)",
        description="Development commands: they speak gRPC straight to the scheduler (:50051) and the "
        "aggregator (:50052) as an operator certificate (`fedstream pki issue --ca CA_DIR --role operator ...`, "
        "--identity or $FEDSTREAM_IDENTITY) or, against a development control plane, --plaintext. "
        "For services without the admin API and for demos; operators use `fedstream federations`, "
        "`runs` and `models`.",
    ).add_subparsers(dest="grpc_command", required=True, metavar="COMMAND")
    start = group.add_parser("run-start", help="start an ad-hoc run from the run-spec flags")
    add_spec_arguments(start)
    start.add_argument("--run-id", default="", help="id of the new run (default: generated)")
    start.add_argument("--follow", action="store_true", help="print progress until the run ends; exit 1 unless it succeeds")
    _endpoint(start, "scheduler", "127.0.0.1:50051")
    start.set_defaults(func=cmd_run_start)
    get = group.add_parser("run-get", help="print a run as the scheduler holds it, as JSON")
    get.add_argument("run_id", help="run id")
    _endpoint(get, "scheduler", "127.0.0.1:50051")
    get.set_defaults(func=cmd_run_get)
    watch_ = group.add_parser("run-watch", help="print a run's progress until it ends; exit 1 unless it succeeds")
    watch_.add_argument("run_id", help="run id")
    _endpoint(watch_, "scheduler", "127.0.0.1:50051")
    watch_.set_defaults(func=cmd_run_watch)
    dl = group.add_parser("model-download", help="stream a model version into a safetensors file, chunk by chunk verified")
    dl.add_argument("run_id", help="the run whose version to download")
    dl.add_argument("--version", default="", help="version id (default: the run's latest)")
    dl.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    _endpoint(dl, "aggregator", "127.0.0.1:50052")
    dl.set_defaults(func=cmd_model_download)
