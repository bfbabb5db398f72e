"""The fedstream command-line tool."""

from __future__ import annotations

import argparse
import signal
import sys

from fedstream.memtune import tune_allocator
from fedstream.version import add_version_argument
from fedstream_cli import access, audit, data, demo, dev_grpc, federations, models, pki, plot, runs
from fedstream_cli.api import ERRORS_EXIT, ApiError, rest_options


def build_parser() -> argparse.ArgumentParser:
    """Every command: the admin API's (login, federations, runs, models, plot, agents, tokens, audit),
    then the local and development ones (demo, data, pki, grpc)."""
    parser = argparse.ArgumentParser(
        prog="fedstream",
        description="fedstream: federated learning for computer vision. Operators drive a tenant's "
        "control plane through its admin API: `fedstream login` once, then federations, runs, models, "
        "agents, enrollment-tokens, tokens, audit and plot (each takes --api, --token and --format table|json). "
        "On this machine: demo (a whole federation), data (sample data sets), pki (a tenant's certificate "
        "authority). For development: grpc (runs and models straight over gRPC with a certificate).",
    )
    add_version_argument(parser, "fedstream-cli")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = rest_options()
    access.add_login(sub)
    federations.add_parsers(sub, common)
    runs.add_parsers(sub, common)
    models.add_parsers(sub, common)
    plot.add_parsers(sub, common)
    access.add_parsers(sub, common)
    audit.add_parsers(sub, common)
    demo.add_parser(sub)
    data.add_parsers(sub)
    pki.add_parsers(sub)
    dev_grpc.add_parsers(sub)
    return parser


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that cleanup code runs as on Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return ERRORS_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
