"""`fedstream pki`: a tenant's certificate authority and the certificates an operator hands
out by hand (services that do not hold the CA key, operators using the `fedstream grpc` development commands)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from fedstream.pki import CA_CERT, CA_KEY, CertificateAuthority, Identity


def cmd_init_ca(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / CA_KEY).exists():
        print(f"error: {out / CA_KEY} exists; refusing to replace a tenant's authority", file=sys.stderr)
        return 1
    ca = CertificateAuthority.create(args.tenant, dt.timedelta(days=args.days))
    ca.save(out)
    print(f"tenant {args.tenant!r}: {out / CA_CERT} (give it to agents with their enrollment token) and "
          f"{out / CA_KEY} (the scheduler's and aggregator's secret; never to a site)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca)
    try:
        ca = CertificateAuthority.load(ca_dir / CA_CERT, ca_dir / CA_KEY)
    except (OSError, ValueError) as e:
        print(f"error: cannot load the authority in {ca_dir}: {e}", file=sys.stderr)
        return 1
    names = tuple(args.dns or ())
    if args.role == "service" and not names:
        print("error: a service certificate needs --dns (the names peers reach it by)", file=sys.stderr)
        return 1
    identity = ca.issue_identity(Identity(ca.tenant, args.role, args.name), dt.timedelta(days=args.days), names)
    identity.save(Path(args.out))
    print(f"{args.role} {args.name!r} of tenant {ca.tenant!r}: {Path(args.out)}/cert.pem, key.pem, ca.pem "
          f"(valid {args.days} days)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pki = sub.add_parser("pki", help="a tenant's certificate authority and hand-issued certificates")
    cmds = pki.add_subparsers(dest="pki_command", required=True)
    init = cmds.add_parser("init-ca", help="create a tenant's certificate authority")
    init.add_argument("--tenant", required=True, help="the tenant's name (as in tenant.tenant)")
    init.add_argument("--out", required=True, help="directory to write ca.pem and ca-key.pem to")
    init.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    init.set_defaults(func=cmd_init_ca)
    issue = cmds.add_parser(
        "issue", help="issue a certificate: an operator's (for the `fedstream grpc` development commands) or a service's "
        "(when it should not hold the CA key). Agents enroll with tokens instead.")
    issue.add_argument("--ca", required=True, help="directory of the authority (init-ca --out)")
    issue.add_argument("--role", choices=["operator", "service"], required=True,
                       help="operator: a person's or a tool's certificate; service: a control-plane service's")
    issue.add_argument("--name", required=True, help="operator or service name, e.g. alice, aggregator")
    issue.add_argument("--dns", action="append", metavar="NAME",
                       help="host name or IP address a service is reached by (repeatable)")
    issue.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    issue.add_argument("--out", required=True, help="directory to write cert.pem, key.pem and ca.pem to")
    issue.set_defaults(func=cmd_issue)
