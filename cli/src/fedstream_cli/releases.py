"""`fedstream releases ...`, `fedstream channels list`, `fedstream run-requests ...` and
`fedstream models export`: a federation's releases (propose, approve, reject, list, show), its
channels, the runs its sites requested (list, approve, deny), and a version's export archive,
over the admin API."""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

from fedstream_cli.api import ApiError, client_from, emit, list_command
from fedstream_cli.progress import Bar, human_bytes, local_time

HEADER = f"{'RELEASE':16} {'CHANNEL':12} {'VERSION':28} {'STATE':10} {'APPROVALS':12} PROPOSED"
REQUEST_HEADER = f"{'REQUEST':16} {'AGENT':20} {'STATE':8} {'RUN':18} {'REQUESTED':19} REASON"


def approvals(rel: dict[str, Any]) -> str:
    admins = sum(1 for a in rel["approvals"] if a["kind"] == "admin")
    sites = len(rel["approvals"]) - admins
    return f"{admins}/{rel['needed']['admins']}a {sites}/{rel['needed']['sites']}s"


def _row(rel: dict[str, Any]) -> str:
    return (f"{rel['release_id']:16} {rel['channel']:12} {rel['version']:28} {rel['state']:10} "
            f"{approvals(rel):12} {local_time(rel['proposed_unix'])} by {rel['proposed_by']}")


def _detail(rel: dict[str, Any]) -> list[str]:
    lines = [HEADER, _row(rel)]
    if rel["note"]:
        lines.append(f"note: {rel['note']}")
    if rel["needed"]["require"]:
        req = rel["needed"]["require"]
        lines.append(f"requires {req['metric']} >= {req['min']:g}")
    lines += [f"approved by {a['kind']} {a['id']} {a['name']} at {local_time(a['unix'])}" for a in rel["approvals"]]
    if rel["reason"]:
        lines.append(f"reason: {rel['reason']}")
    return lines


def cmd_propose(args: argparse.Namespace) -> int:
    rel = client_from(args).call("POST", f"/federations/{args.federation}/releases",
                                 json={"channel": args.channel, "version": args.version, "note": args.note})
    emit(args, rel, [f"release {rel['release_id']} proposed: {rel['channel']} <- {rel['version']}; needs "
                     f"{rel['needed']['admins']} admin and {rel['needed']['sites']} site approvals"])
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    rel = client_from(args).call("POST", f"/releases/{args.release_id}/approve")
    emit(args, rel, [f"release {rel['release_id']} approved ({approvals(rel)}): {rel['state']}"])
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    rel = client_from(args).call("POST", f"/releases/{args.release_id}/reject", json={"reason": args.reason})
    emit(args, rel, [f"release {rel['release_id']} rejected"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({k: v for k, v in (("channel", args.channel), ("state", args.state)) if v})
    return list_command(args, f"/federations/{args.federation}/releases" + (f"?{query}" if query else ""),
                        HEADER, _row)


def cmd_show(args: argparse.Namespace) -> int:
    rel = client_from(args).call("GET", f"/releases/{args.release_id}")
    emit(args, rel, _detail(rel))
    return 0


def cmd_channels(args: argparse.Namespace) -> int:
    channels = client_from(args).call("GET", f"/federations/{args.federation}/channels")
    rows = [f"{name:16} {version or '-'}" for name, version in channels.items()]
    emit(args, channels, [f"{'CHANNEL':16} VERSION", *rows])
    return 0


def _request_row(req: dict[str, Any]) -> str:
    return (f"{req['request_id']:16} {req['agent_id']:20} {req['state']:8} {req['run_id'] or '-':18} "
            f"{local_time(req['requested_unix']):19} {req['reason']}")


def cmd_requests(args: argparse.Namespace) -> int:
    return list_command(args, f"/federations/{args.federation}/run-requests", REQUEST_HEADER, _request_row)


def cmd_decide(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.decision == "deny" else None
    req = client_from(args).call("POST", f"/run-requests/{args.request_id}/{args.decision}", json=body)
    more = f": run {req['run_id']} started" if req["run_id"] else ""
    emit(args, req, [f"run request {req['request_id']} {req['state']}{more}"])
    return 0


def _release_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    rel = sub.add_parser("releases", help="releases of model versions to channels: propose, approve, reject, "
                         "list, show").add_subparsers(dest="releases_command", required=True, metavar="COMMAND")
    p = rel.add_parser("propose", parents=[common], help="propose a version for a channel (operator)")
    p.add_argument("federation", help="federation id")
    p.add_argument("--channel", required=True, help="one of the federation's release channels, e.g. production")
    p.add_argument("--version", required=True, help="RUN/NNNNNN")
    p.add_argument("--note", default="", help="why this version, for the approvers")
    p.set_defaults(func=cmd_propose)
    a = rel.add_parser("approve", parents=[common], help="approve a proposed release (admin; not its proposer)")
    a.add_argument("release_id", help="rel-...")
    a.set_defaults(func=cmd_approve)
    r = rel.add_parser("reject", parents=[common], help="reject a proposed release (admin)")
    r.add_argument("release_id", help="rel-...")
    r.add_argument("--reason", required=True, help="why")
    r.set_defaults(func=cmd_reject)
    ls = rel.add_parser("list", parents=[common], help="a federation's releases, oldest first")
    ls.add_argument("federation", help="federation id")
    ls.add_argument("--channel", default="", help="only this channel's")
    ls.add_argument("--state", default=None, choices=["proposed", "released", "rejected", "superseded"],
                    help="only releases in this state")
    ls.set_defaults(func=cmd_list)
    show = rel.add_parser("show", parents=[common], help="a release with its approvals")
    show.add_argument("release_id", help="rel-...")
    show.set_defaults(func=cmd_show)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    _release_parsers(sub, common)
    ch = sub.add_parser("channels", help="a federation's release channels and their versions").add_subparsers(
        dest="channels_command", required=True, metavar="COMMAND")
    cl = ch.add_parser("list", parents=[common], help="each channel with the version it points at")
    cl.add_argument("federation", help="federation id")
    cl.set_defaults(func=cmd_channels)
    rr = sub.add_parser("run-requests", help="runs that sites requested: list, approve, deny").add_subparsers(
        dest="run_requests_command", required=True, metavar="COMMAND")
    rl = rr.add_parser("list", parents=[common], help="a federation's run requests, oldest first")
    rl.add_argument("federation", help="federation id")
    rl.set_defaults(func=cmd_requests)
    ra = rr.add_parser("approve", parents=[common], help="start a requested run (operator)")
    ra.add_argument("request_id", help="req-...")
    ra.set_defaults(func=cmd_decide, decision="approve")
    rd = rr.add_parser("deny", parents=[common], help="refuse a requested run (operator)")
    rd.add_argument("request_id", help="req-...")
    rd.add_argument("--reason", required=True, help="why")
    rd.set_defaults(func=cmd_decide, decision="deny")


EXPORT_MEMBERS = ("lineage.json", "card.md", "card.json", "model.safetensors")


def verify_archive(path: Path) -> dict[str, Any]:
    """The archive's manifest once it lists exactly the archive's members, among them every one
    an export has, and each member's SHA-256 and size match it; raises ApiError."""
    with tarfile.open(path, "r:") as tar:
        names = set(tar.getnames())
        if "MANIFEST.json" not in names:
            raise ApiError(f"export {path}: no MANIFEST.json")
        f = tar.extractfile(tar.getmember("MANIFEST.json"))
        manifest: dict[str, Any] = json.loads(f.read() if f is not None else b"{}")
        listed = manifest.get("members", {})
        missing = [m for m in EXPORT_MEMBERS if m not in listed]
        unlisted = sorted(names - set(listed) - {"MANIFEST.json"})
        if missing or unlisted or set(listed) - names:
            raise ApiError(f"export {path}: its members do not match its manifest (missing {missing or 'none'}, "
                           f"not listed {unlisted or 'none'}, listed but absent {sorted(set(listed) - names) or 'none'})")
        for name, want in listed.items():
            member = tar.extractfile(tar.getmember(name))
            digest, size = hashlib.sha256(), 0
            while member is not None and (piece := member.read(1 << 20)):
                digest.update(piece)
                size += len(piece)
            if (digest.hexdigest(), size) != (want["sha256"], want["bytes"]):
                raise ApiError(f"export {path}: member {name} does not match its manifest")
    return manifest


def cmd_export(args: argparse.Namespace) -> int:
    """Streams the archive into ``--output`` (via a .part file), then checks it against its manifest."""
    client = client_from(args)
    out: Path = args.output or Path(args.version.replace("/", "-") + ".tar")
    tmp = out.with_name(out.name + ".part")
    done = 0
    size = client.call("GET", f"/models/{args.version}")["size_bytes"]  # the bulk of the archive
    try:
        with client.stream(f"/models/{args.version}/export") as r, tmp.open("wb") as f:
            bar = Bar(size, f"exporting {args.version}", unit="B")
            for piece in r.iter_bytes(1 << 20):
                f.write(piece)
                done += len(piece)
                bar.total = max(bar.total, done)  # the weights, then the card, lineage and manifest
                bar.show(done)
            bar.close()
        manifest = verify_archive(tmp)
    except (ApiError, tarfile.TarError, KeyError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise e if isinstance(e, ApiError) else ApiError(f"export of {args.version} is not a sound archive: {e}") from None
    tmp.replace(out)
    emit(args, {"version": args.version, "path": str(out), "bytes": done, "manifest": manifest},
         [f"{out}: {args.version}, {human_bytes(done)}, {len(manifest['members'])} members verified"])
    return 0


def add_export_parser(models: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    ex = models.add_parser("export", parents=[common], help="a version as a self-describing tar: weights, "
                           "lineage, card and a manifest of SHA-256s, verified")
    ex.add_argument("version", help="RUN/NNNNNN")
    ex.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                    help="file to write (default: RUN-NNNNNN.tar)")
    ex.set_defaults(func=cmd_export)
