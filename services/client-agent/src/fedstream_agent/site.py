"""`fedstream-agent approve-release`, `request-run` and `track`: what a site does through its
agent's identity beyond training. Approving a release of a version the site took part in,
asking for a run of a federation, and keeping a release channel's newest version on disk for
the site's own serving stack (atomically replaced, verified by its SHA-256)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from fedstream.dialing import AGENT, AGENT_ENVS, add_identity_arguments, dial
from fedstream.exitcodes import ExitCode
from fedstream.safetensors_io import encode_header
from fedstream.transfer import DownloadedModel, download_model
from fedstream.v1 import scheduler_pb2 as pb
from fedstream.v1 import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MODEL_FILE, RELEASE_FILE = "model.safetensors", "release.json"


def add_site_arguments(p: argparse.ArgumentParser) -> None:
    """--scheduler, --agent-id and the identity options, defaulting to the agent's own settings."""
    p.add_argument("--scheduler", default=os.environ.get("FEDSTREAM_AGENT_SCHEDULER_ENDPOINT", "127.0.0.1:50051"),
                   help="scheduler host:port (default $FEDSTREAM_AGENT_SCHEDULER_ENDPOINT or 127.0.0.1:50051)")
    p.add_argument("--agent-id", default=os.environ.get("FEDSTREAM_AGENT_AGENT_ID", ""),
                   help="this agent's id: needed only with --plaintext (the certificate names the agent)")
    add_identity_arguments(p, AGENT_ENVS, AGENT)


def site_stub(args: argparse.Namespace) -> pb_grpc.SiteServiceStub:
    return pb_grpc.SiteServiceStub(dial(args, args.scheduler))


def refused(e: grpc.RpcError) -> int:
    print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
    return ExitCode.FAILED


def cmd_approve_release(args: argparse.Namespace) -> int:
    try:
        info = site_stub(args).ApproveRelease(
            pb.ApproveReleaseRequest(agent_id=args.agent_id, release_id=args.release_id), timeout=30)
    except grpc.RpcError as e:
        return refused(e)
    print(f"release {info.release_id} ({info.channel} <- {info.version}): {info.state}; approvals: "
          f"{info.admin_approvals}/{info.admins_needed} admins, {info.site_approvals}/{info.sites_needed} sites")
    return ExitCode.OK


def cmd_request_run(args: argparse.Namespace) -> int:
    try:
        info = site_stub(args).RequestRun(
            pb.RequestRunRequest(agent_id=args.agent_id, federation=args.federation, reason=args.reason), timeout=30)
    except grpc.RpcError as e:
        return refused(e)
    more = f": run {info.run_id} started" if info.run_id else ": waiting for an operator's approval"
    print(f"run request {info.request_id} of {info.federation} {info.state}{more if info.state != 'denied' else ''}")
    return ExitCode.OK


def channel_version(args: argparse.Namespace) -> pb.ChannelVersion:
    """The version the channel points at now; raises grpc.RpcError."""
    reply: pb.ChannelVersion = site_stub(args).GetChannel(
        pb.GetChannelRequest(agent_id=args.agent_id, federation=args.federation, channel=args.channel), timeout=30)
    return reply


def download_release(args: argparse.Namespace, release: pb.ChannelVersion) -> DownloadedModel:
    """Downloads the channel's version (chunks verified) and checks its data's SHA-256 against
    the channel's; raises grpc.RpcError, or ValueError for a mismatch."""
    target = getattr(args, "aggregator", "") or release.aggregator_endpoint
    run_id = release.version.split("/", 1)[0]
    model = download_model(dial(args, target), run_id, release.version, timeout=600)
    got = hashlib.sha256(model.buffer.data).hexdigest()
    if got != release.sha256:
        raise ValueError(f"version {release.version} downloaded with SHA-256 {got}, not {release.sha256}")
    return model


def _replace(path: Path, pieces: list[bytes]) -> None:
    """Writes ``path`` whole or not at all: a temporary file beside it, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        for piece in pieces:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def installed(directory: Path) -> dict[str, Any]:
    """What release.json in ``directory`` says is installed ({} when nothing readable is)."""
    try:
        doc: dict[str, Any] = json.loads((directory / RELEASE_FILE).read_text())
        return doc
    except (OSError, ValueError):
        return {}


def install(args: argparse.Namespace, directory: Path) -> bool:
    """Brings ``directory`` to the channel's version when it changed; returns whether it did.
    The model is replaced first, then release.json, each atomically."""
    release = channel_version(args)
    have = installed(directory)
    if have.get("version") == release.version and have.get("data_sha256") == release.sha256 \
            and (directory / MODEL_FILE).exists():
        return False
    model = download_release(args, release)
    directory.mkdir(parents=True, exist_ok=True)
    pieces = [encode_header(model.layout, model.metadata), bytes(model.buffer.data)]
    _replace(directory / MODEL_FILE, pieces)
    file_sha256 = hashlib.sha256()
    for piece in pieces:
        file_sha256.update(piece)
    # data_sha256: the version's tensor data, as the API and the store name it; file_sha256: the
    # file as written (what `sha256sum model.safetensors` prints: the same as the API's download).
    doc = {"federation": release.federation, "channel": release.channel, "version": release.version,
           "release_id": release.release_id, "data_sha256": release.sha256, "file_sha256": file_sha256.hexdigest(),
           "released_unix": release.released_unix, "installed_unix": time.time()}
    _replace(directory / RELEASE_FILE, [json.dumps(doc, indent=2).encode() + b"\n"])
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    print(f"{directory / MODEL_FILE}: {release.channel} is {release.version} (release {release.release_id})",
          file=sys.stderr)
    return True


def cmd_track(args: argparse.Namespace) -> int:
    """Once (--once: the exit code says whether it worked) or every --interval-s until stopped
    (Ctrl-C or SIGTERM: a replacement cut short leaves the installed files as they were)."""
    try:
        return _track(args)
    except KeyboardInterrupt:
        return ExitCode.OK


def _track(args: argparse.Namespace) -> int:
    while True:
        try:
            install(args, args.dir)
            if args.once:
                return ExitCode.OK
        except grpc.RpcError as e:
            if args.once:
                return refused(e)
            log.warning("track %s/%s: %s: %s", args.federation, args.channel, e.code().name, e.details())
        except (OSError, ValueError) as e:
            if args.once:
                print(f"error: {e}", file=sys.stderr)
                return ExitCode.FAILED
            log.warning("track %s/%s: %s", args.federation, args.channel, e)
        time.sleep(args.interval_s)


def interval(text: str) -> float:
    """--interval-s: seconds, a finite number above 0 (0 would ask the scheduler without pause)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    approve = sub.add_parser("approve-release", help="approve a proposed release of a version this site took part in")
    approve.add_argument("release_id", help="the release's id (rel-...)")
    add_site_arguments(approve)
    approve.set_defaults(site_command=cmd_approve_release)
    request = sub.add_parser("request-run", help="ask for a run of a federation this agent belongs to")
    request.add_argument("federation", help="federation id")
    request.add_argument("--reason", default="", help="why (one line, at most 500 characters, no control characters), shown to operators")
    add_site_arguments(request)
    request.set_defaults(site_command=cmd_request_run)
    track = sub.add_parser("track", help="keep a release channel's newest version on disk for a serving stack: "
                           "DIR/model.safetensors and DIR/release.json, replaced atomically when it changes")
    track.add_argument("--federation", required=True, help="federation id")
    track.add_argument("--channel", required=True, help="release channel, e.g. production")
    track.add_argument("--dir", required=True, type=Path, help="directory to keep the model in")
    track.add_argument("--interval-s", type=interval, default=60.0, help="seconds between checks (default 60)")
    track.add_argument("--once", action="store_true", help="check once and exit (0: up to date)")
    track.add_argument("--aggregator", default="", help="aggregator host:port (default: the one the scheduler names)")
    add_site_arguments(track)
    track.set_defaults(site_command=cmd_track)
