"""Who may do what: `fedstream login`, `agents`, `enrollment-tokens` and API `tokens`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from fedstream_cli.api import API_ENV, ApiError, Client, client_from, emit, list_command, save_login
from fedstream_cli.progress import local_time


def cmd_login(args: argparse.Namespace) -> int:
    api = args.api or os.environ.get(API_ENV, "")
    if not api:
        raise SystemExit(f"fedstream login needs --api URL (or ${API_ENV})")
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    client = Client(api, token)
    _prove(client, args.wait)
    path = save_login(client.api, token)
    print(f"logged in to {client.api}; credentials in {path}")
    return 0


def _prove(client: Client, wait_s: float) -> None:
    """Checks the token with a call any role may make; while the API cannot be reached or
    answers 503 (a scheduler still starting), tries again for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.call("GET", "/runs?limit=1")
            return
        except ApiError as e:
            if e.status not in (0, 503) or time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def cmd_agents_list(args: argparse.Namespace) -> int:
    return list_command(args, "/agents", f"{'AGENT':24} {'STATUS':9} {'CONNECTED':9} {'DEVICE':6} {'CERTS':>5}  TASKS",
                        lambda a: f"{a['agent_id']:24} {a['status']:9} {'yes' if a['connected'] else 'no':9} "
                        f"{a['capabilities'].get('device', '-'):6} {a['certificates']:>5}  {','.join(a['tasks'])}")


def cmd_agents_change(args: argparse.Namespace) -> int:
    client = client_from(args)
    if args.action == "delete":
        client.call("DELETE", f"/agents/{args.agent_id}")
    else:
        client.call("POST", f"/agents/{args.agent_id}/{args.action}")
    emit(args, {"agent_id": args.agent_id, "action": args.action}, [f"agent {args.agent_id} {args.action}d"])
    return 0


def _write_secret(path: str, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def _created(args: argparse.Namespace, record: dict[str, Any], first: str) -> None:
    """Prints a new secret, or writes it to --output (mode 0600) and says where."""
    if args.output:
        _write_secret(args.output, record["token"])
    emit(args, record, [first, f"written to {args.output}" if args.output else record["token"]])


def cmd_enrollment_create(args: argparse.Namespace) -> int:
    body = {"agent_id": args.agent_id, "ttl_s": args.ttl, "name": args.name}
    tok = client_from(args).call("POST", "/enrollment-tokens", json=body)
    who = f"agent {tok['agent_id']}" if tok["agent_id"] else "any agent id"
    _created(args, tok, f"enrollment token {tok['token_id']} for {who}, usable once until "
             f"{local_time(tok['expires_unix'], '%Y-%m-%d %H:%M:%S %Z')}")
    return 0


def cmd_enrollment_list(args: argparse.Namespace) -> int:
    return list_command(args, "/enrollment-tokens", f"{'TOKEN':18} {'AGENT':24} {'EXPIRES':20} NAME",
                        lambda t: f"{t['token_id']:18} {t['agent_id'] or '(any)':24} "
                        f"{local_time(t['expires_unix']):20} {t['name']}")


def cmd_tokens_create(args: argparse.Namespace) -> int:
    tok = client_from(args).call("POST", "/tokens", json={"role": args.role, "name": args.name})
    _created(args, tok, f"API token {tok['token_id']} ({tok['role']})")
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    return list_command(args, "/tokens", f"{'TOKEN':18} {'ROLE':9} {'CREATED':20} NAME",
                        lambda t: f"{t['token_id']:18} {t['role']:9} {local_time(t['created_unix']):20} {t['name']}")


def cmd_delete(args: argparse.Namespace) -> int:
    client_from(args).call("DELETE", f"/{args.collection}/{args.token_id}")
    emit(args, {"token_id": args.token_id, "deleted": True}, [f"{args.what} {args.token_id} deleted"])
    return 0


def _secret_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="", metavar="FILE",
                   help="write the secret to FILE (mode 0600) instead of printing it")


def _agents(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    agents = sub.add_parser("agents", help="list, disable, enable and delete agents").add_subparsers(
        dest="agents_command", required=True, metavar="COMMAND")
    agents.add_parser("list", parents=[common], help="list agents").set_defaults(func=cmd_agents_list)
    for action, text in (("disable", "refuse its calls and close its stream until enabled"),
                         ("enable", "let a disabled agent back"),
                         ("delete", "forget it and revoke its certificates (it must enroll again)")):
        p = agents.add_parser(action, parents=[common], help=f"{action} an agent: {text}")
        p.add_argument("agent_id", help="the agent's id (`fedstream agents list`)")
        p.set_defaults(func=cmd_agents_change, action=action)


def _tokens(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    enr = sub.add_parser("enrollment-tokens", help="one-time tokens agents enroll with").add_subparsers(
        dest="enrollment_command", required=True, metavar="COMMAND")
    create = enr.add_parser("create", parents=[common], help="make a token an agent enrolls with once")
    create.add_argument("--agent-id", default="", help="the agent id it enrolls (default: any id the agent names)")
    create.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires unused (default: 3600)")
    create.add_argument("--name", default="", help="what it is for")
    _secret_output(create)
    create.set_defaults(func=cmd_enrollment_create)
    enr.add_parser("list", parents=[common], help="tokens not yet used").set_defaults(func=cmd_enrollment_list)
    api = sub.add_parser("tokens", help="the admin API's bearer tokens (admins only)").add_subparsers(
        dest="tokens_command", required=True, metavar="COMMAND")
    tcreate = api.add_parser("create", parents=[common], help="make an API token")
    tcreate.add_argument("--role", choices=["viewer", "operator", "admin"], required=True,
                         help="viewer: read; operator: also start and cancel runs, manage agents; admin: everything")
    tcreate.add_argument("--name", default="", help="whom or what it is for")
    _secret_output(tcreate)
    tcreate.set_defaults(func=cmd_tokens_create)
    api.add_parser("list", parents=[common], help="list API tokens").set_defaults(func=cmd_tokens_list)
    for group, collection, what in ((enr, "enrollment-tokens", "enrollment token"), (api, "tokens", "API token")):
        delete = group.add_parser("delete", parents=[common], help=f"withdraw an {what}")
        delete.add_argument("token_id", help=f"the {what}'s id (TOKEN in `list`), not its secret")
        delete.set_defaults(func=cmd_delete, collection=collection, what=what)


def add_login(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    login = sub.add_parser("login", help="check and save the admin API URL and a token",
                           description="Checks the token against the admin API and saves both for the other commands.")
    login.add_argument("--api", default="", metavar="URL",
                       help=f"the scheduler's admin API, e.g. https://fedstream.example.com (default: ${API_ENV})")
    login.add_argument("--token", required=True, help="a token of the tenant; '-' reads it from standard input")
    login.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="while the API cannot be reached (a scheduler just started), try again for up to "
                       "SECONDS (default: 0, once)")
    login.set_defaults(func=cmd_login)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    _agents(sub, common)
    _tokens(sub, common)
