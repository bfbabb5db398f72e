"""`fedstream-agent infer`: FedVision's last step, the global model deployed at a site. Downloads
a model version from the aggregator (verified chunk by chunk), or the version a federation's
release channel points at (verified by its SHA-256), runs the task on a folder of images and
writes the detections as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import grpc

from fedstream.dialing import AGENT, AGENT_ENVS, add_identity_arguments, dial
from fedstream.exitcodes import ExitCode
from fedstream.transfer import DownloadedModel, download_model
from fedstream_tasks import get_task, known_tasks

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


@runtime_checkable
class Predictor(Protocol):
    """A task that runs inference on images: ``predict`` returns one result per path, each
    with its ``detections``."""

    def predict(self, model: nn.Module, paths: Sequence[Path], device: torch.device) -> list[dict[str, Any]]: ...


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregator", default="", help="aggregator host:port to download the model from "
                   "(with --channel, default: the one the scheduler names)")
    p.add_argument("--run", default="", help="run id (or --federation and --channel)")
    p.add_argument("--version", default="", help="model version (default: the run's latest)")
    p.add_argument("--federation", default="", help="with --channel: the federation whose release to run")
    p.add_argument("--channel", default="", help="a release channel (e.g. production): run the version it "
                   "points at, asked of the scheduler with this agent's identity")
    p.add_argument("--scheduler", default=os.environ.get("FEDSTREAM_AGENT_SCHEDULER_ENDPOINT", "127.0.0.1:50051"),
                   help="with --channel: scheduler host:port (default $FEDSTREAM_AGENT_SCHEDULER_ENDPOINT)")
    p.add_argument("--agent-id", default=os.environ.get("FEDSTREAM_AGENT_AGENT_ID", ""),
                   help="with --channel and --plaintext: this agent's id")
    p.add_argument("--task", required=True, help="task name, e.g. fedvision")
    p.add_argument("--images", required=True, type=Path, help="folder of images (jpg, png, bmp)")
    p.add_argument("-o", "--output", default="-", help="JSON file to write (default: standard output)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    add_identity_arguments(p, AGENT_ENVS, AGENT + " or, with --run, an operator's")


def fetch_model(args: argparse.Namespace) -> DownloadedModel:
    """The model to run: the channel's version (--federation, --channel), else --run's. Raises
    grpc.RpcError, or ValueError for a download that fails its SHA-256."""
    if args.channel:
        from fedstream_agent.site import channel_version, download_release

        return download_release(args, channel_version(args))
    return download_model(dial(args, args.aggregator), args.run, args.version, timeout=600)


def run_inference(args: argparse.Namespace) -> int:
    import torch

    from fedstream_tasks.base import pick_device
    from fedstream_tasks.torchio import state_of

    task = get_task(args.task)
    predictor = task if isinstance(task, Predictor) else None
    if predictor is None:
        able = ", ".join(sorted(n for n in known_tasks() if isinstance(get_task(n), Predictor)))
        print(f"error: task {args.task!r} cannot run inference on images (tasks that can: {able})", file=sys.stderr)
        return ExitCode.BAD_SETTINGS
    if not (args.federation if args.channel else args.run and args.aggregator):
        print("error: name the model: --aggregator and --run (and --version), or --federation and --channel",
              file=sys.stderr)
        return ExitCode.BAD_SETTINGS
    if not args.images.is_dir():
        print(f"error: {args.images} is not a folder", file=sys.stderr)
        return ExitCode.BAD_SETTINGS
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        model = fetch_model(args)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return ExitCode.FAILED
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.FAILED
    net = task.build_model(0)
    missing, unexpected = net.load_state_dict(state_of(model.buffer), strict=False)
    if unexpected or any(task.is_shared(n) for n in missing):
        print(f"error: model {model.version} does not fit task {args.task!r}", file=sys.stderr)
        return ExitCode.FAILED
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    started = time.perf_counter()
    results = predictor.predict(net, paths, device)
    doc = {"version": model.version, "task": args.task, "seconds": round(time.perf_counter() - started, 3),
           "images": results}
    text = json.dumps(doc, indent=2)
    if args.output == "-":
        print(text)
    else:
        Path(args.output).write_text(text + "\n")
        found = sum(len(r["detections"]) for r in results)
        print(f"{len(paths)} images, {found} detections with {model.version} -> {args.output}", file=sys.stderr)
    return ExitCode.OK
