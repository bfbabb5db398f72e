"""`fedstream audit list`: the tenant's audit log of operator actions over the admin API."""

from __future__ import annotations

import argparse
import time
import urllib.parse
from typing import Any

from fedstream.state import AuditAction
from fedstream_cli.api import list_command


def _row(e: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time_unix"]))
    detail = ", ".join(f"{k} {v}" for k, v in sorted(e["detail"].items()))
    held = ", ".join(x for x in (e.get("actor_name", ""), e.get("role", "")) if x)
    who = f"{e['actor']} ({held})" if held else e["actor"]
    return f"{e['seq']:>6} {when} {e['action']:24} {e['target']:36} {who}{'  ' + detail if detail else ''}"


def cmd_list(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({k: v for k, v in (("action", args.action), ("actor", args.actor)) if v})
    return list_command(args, "/audit" + (f"?{query}" if query else ""),
                        f"{'SEQ':>6} {'TIME (UTC)':19} {'ACTION':24} {'TARGET':36} ACTOR", _row)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser(
        "audit", help="the audit log: who changed what (operators and admins)",
    ).add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    ls = audit.add_parser("list", parents=[common], help="list operator actions, oldest first")
    ls.add_argument("--action", default="", choices=[a.value for a in AuditAction], metavar="ACTION",
                    help=f"only this action: one of {', '.join(a.value for a in AuditAction)}")
    ls.add_argument("--actor", default="", help="only this actor, e.g. token/tok-1a2b3c4d5e6f")
    ls.set_defaults(func=cmd_list)
