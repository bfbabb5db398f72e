"""Command-line options for dialing the control plane over gRPC as an operator: shared by the
`fedstream` CLI and `fedstream-agent infer`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from fedstream.pki import TlsIdentity

IDENTITY_ENV = "FEDSTREAM_IDENTITY"


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    """--identity / --plaintext for commands that dial the control plane over gRPC."""
    p.add_argument("--identity", default=os.environ.get(IDENTITY_ENV, ""), metavar="DIR",
                   help=f"directory with this operator's cert.pem, key.pem and the tenant's ca.pem "
                   f"(`fedstream pki issue --role operator`; default ${IDENTITY_ENV})")
    p.add_argument("--plaintext", action="store_true",
                   help="dial without TLS: only for a control plane in development mode")


def identity_of_args(args: argparse.Namespace) -> TlsIdentity | None:
    """The identity the command presents; None with --plaintext. Raises SystemExit when there
    is neither."""
    if args.plaintext:
        return None
    if not args.identity:
        raise SystemExit(f"error: --identity DIR (or ${IDENTITY_ENV}) is required, or --plaintext for a "
                         "development control plane")
    try:
        return TlsIdentity.load(Path(args.identity))
    except OSError as e:
        raise SystemExit(f"error: cannot read the identity in {args.identity}: {e.strerror}") from None


def dial(args: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel to ``target`` as the identity the command names (plaintext with --plaintext)."""
    from fedstream.grpcutil import channel

    return channel(target, identity_of_args(args))
