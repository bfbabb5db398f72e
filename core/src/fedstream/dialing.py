"""Command-line options for dialing the control plane over gRPC as an operator or an agent:
shared by the `fedstream` CLI and the `fedstream-agent` commands beside its service."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from fedstream.exitcodes import ExitCode
from fedstream.pki import TlsIdentity

IDENTITY_ENV = "FEDSTREAM_IDENTITY"


OPERATOR = "this operator's cert.pem, key.pem and the tenant's ca.pem (`fedstream pki issue --role operator`)"
# An agent's own commands (infer, track, approve-release, request-run) present its enrolled
# identity, the directory its service keeps (TLS__IDENTITY_DIR); an operator's does for downloads.
AGENT_ENVS = ("FEDSTREAM_AGENT_TLS__IDENTITY_DIR", IDENTITY_ENV)
AGENT = "this agent's enrolled cert.pem, key.pem and ca.pem (its service's TLS__IDENTITY_DIR)"


def add_identity_arguments(p: argparse.ArgumentParser, envs: tuple[str, ...] = (IDENTITY_ENV,),
                           holds: str = OPERATOR) -> None:
    """--identity / --plaintext for commands that dial the control plane over gRPC; --identity
    defaults to the first of ``envs`` that is set."""
    default = next((os.environ[e] for e in envs if os.environ.get(e)), "")
    p.add_argument("--identity", default=default, metavar="DIR",
                   help=f"directory with {holds}; default {' or '.join('$' + e for e in envs)}")
    p.add_argument("--plaintext", action="store_true",
                   help="dial without TLS: only for a control plane in development mode")
    p.set_defaults(identity_envs=envs)


def identity_of_args(args: argparse.Namespace) -> TlsIdentity | None:
    """The identity the command presents; None with --plaintext. Exits 2 (a usage error) when
    there is neither, 1 when the directory cannot be read."""
    if args.plaintext:
        return None
    if not args.identity:
        envs = " or ".join("$" + e for e in getattr(args, "identity_envs", (IDENTITY_ENV,)))
        print(f"error: --identity DIR (or {envs}) is required, or --plaintext for a development control plane",
              file=sys.stderr)
        raise SystemExit(ExitCode.BAD_SETTINGS)
    try:
        return TlsIdentity.load(Path(args.identity))
    except OSError as e:
        raise SystemExit(f"error: cannot read the identity in {args.identity}: {e.strerror}") from None


def dial(args: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel to ``target`` as the identity the command names (plaintext with --plaintext)."""
    from fedstream.grpcutil import channel

    return channel(target, identity_of_args(args))
