"""`fedstream models ...`: a federation's model versions: list, show, download (verified), pin, export,
and their lineage and model cards (fedstream_cli.lineage)."""

from __future__ import annotations

import argparse
import hashlib
import struct
from pathlib import Path
from typing import Any

from fedstream_cli import lineage
from fedstream_cli.api import ApiError, Client, client_from, emit, list_command
from fedstream_cli.progress import Bar, human_bytes, local_time

HEADER = f"{'VERSION':32} {'SIZE':>10} {'PINNED':6} CREATED"


def _row(m: dict[str, Any]) -> str:
    return f"{m['version']:32} {human_bytes(m['size_bytes']):>10} {'yes' if m['pinned'] else '':6} {local_time(m['created_unix'])}"


def cmd_list(args: argparse.Namespace) -> int:
    return list_command(args, f"/federations/{args.federation}/models", HEADER, _row)


def cmd_get(args: argparse.Namespace) -> int:
    model = client_from(args).call("GET", f"/models/{args.version}")
    tensors = [f"  {t['name']:40} {t['dtype']:8} {t['shape']}" for t in model["tensors"]]
    emit(args, model, [HEADER, _row(model), f"data SHA-256 {model['sha256']}", *tensors])
    return 0


class DataDigest:
    """SHA-256 of a safetensors file's data section (after the 8-byte length and the header), fed piece by piece."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.header_left = -1
        self.prefix = b""

    def update(self, piece: bytes) -> None:
        if self.header_left < 0:
            self.prefix += piece
            if len(self.prefix) < 8:
                return
            self.header_left = 8 + struct.unpack("<Q", self.prefix[:8])[0]
            piece = self.prefix
        skip = min(self.header_left, len(piece))
        self.header_left -= skip
        self.sha.update(piece[skip:])


def newest_version(client: Client, ref: str) -> str:
    """``ref`` itself when it names a version (RUN/NNNNNN); given a federation, its newest version."""
    if "/" in ref:
        return ref
    versions = client.pages(f"/federations/{ref}/models")
    if not versions:
        raise ApiError(f"federation {ref!r} has no model version yet")
    return str(max(versions, key=lambda m: (m["created_unix"], m["version"]))["version"])


def cmd_download(args: argparse.Namespace) -> int:
    """Streams a version into ``--output`` (via a .part file), checking the data section's SHA-256."""
    client = client_from(args)
    args.version = newest_version(client, args.version)
    out = args.output or Path(args.version.replace("/", "-") + ".safetensors")
    tmp = out.with_name(out.name + ".part")
    digest, done = DataDigest(), 0
    try:
        with client.stream(f"/models/{args.version}/download") as r, tmp.open("wb") as f:
            expected = r.headers.get("x-fedstream-sha256", "")
            bar = Bar(int(r.headers.get("content-length", 0)), f"downloading {args.version}", unit="B")
            for piece in r.iter_bytes(1 << 20):
                f.write(piece)
                done += len(piece)
                digest.update(piece)
                bar.show(done)
            bar.close()
    except ApiError:
        tmp.unlink(missing_ok=True)
        raise
    got = digest.sha.hexdigest()
    if expected and got != expected:
        tmp.unlink(missing_ok=True)
        raise ApiError(f"download of {args.version} is corrupt: SHA-256 {got} != {expected}")
    tmp.replace(out)
    emit(args, {"version": args.version, "path": str(out), "bytes": done, "sha256": got},
         [f"{out}: {args.version}, {human_bytes(done)}, data SHA-256 verified"])
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    model = client_from(args).call("POST", f"/models/{args.version}/{'pin' if args.pin else 'unpin'}")
    emit(args, model, [f"{model['version']} {'pinned' if model['pinned'] else 'unpinned'}"])
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    models = sub.add_parser("models", help="model versions: list, show, download, pin, lineage, card").add_subparsers(
        dest="models_command", required=True, metavar="COMMAND")
    ls = models.add_parser("list", parents=[common], help="a federation's model versions")
    ls.add_argument("federation", help="federation id")
    ls.set_defaults(func=cmd_list)
    get = models.add_parser("get", parents=[common], help="show a version: size, checksum, tensors")
    get.add_argument("version", help="RUN/NNNNNN")
    get.set_defaults(func=cmd_get)
    dl = models.add_parser("download", parents=[common], help="download a version as a safetensors file, verified")
    dl.add_argument("version", help="RUN/NNNNNN, or a federation id for its newest version")
    dl.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                    help="file to write (default: RUN-NNNNNN.safetensors)")
    dl.set_defaults(func=cmd_download)
    for name, pin, text in (("pin", True, "keep a version through retention; runs start from the newest pinned"),
                            ("unpin", False, "let retention remove a version again")):
        p = models.add_parser(name, parents=[common], help=text)
        p.add_argument("version", help="RUN/NNNNNN")
        p.set_defaults(func=cmd_pin, pin=pin)
    lineage.add_parsers(models, common)
    from fedstream_cli.releases import add_export_parser

    add_export_parser(models, common)
