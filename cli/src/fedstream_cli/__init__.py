"""The fedstream command-line tool."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from fedstream.memtune import tune_allocator
from fedstream.version import add_version_argument
from fedstream_cli import (
    access,
    audit,
    data,
    demo,
    dev_grpc,
    federations,
    local,
    models,
    pki,
    plot,
    releases,
    runs,
)
from fedstream_cli.api import ERRORS_EXIT, ApiError, rest_options


def build_parser() -> argparse.ArgumentParser:
    """Every command: the admin API's (login, federations, runs, models, plot, agents, tokens, audit),
    then the local and development ones (demo, local, data, pki, grpc)."""
    parser = argparse.ArgumentParser(
        prog="fedstream",
        description="fedstream: federated learning for computer vision. Operators drive a tenant's "
        "control plane through its admin API: `fedstream login` once, then federations, runs, models, "
        "releases, channels, run-requests, agents, enrollment-tokens, tokens, audit and plot (each takes --api, --token and --format table|json). "
        "On this machine: demo (a whole federation), local (a control plane and agents left running for "
        "these commands), data (sample data sets), pki (a tenant's certificate authority). For development: grpc (runs and models straight over gRPC with a certificate).",
    )
    add_version_argument(parser, "fedstream-cli")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = rest_options()
    access.add_login(sub)
    federations.add_parsers(sub, common)
    runs.add_parsers(sub, common)
    models.add_parsers(sub, common)
    releases.add_parsers(sub, common)
    plot.add_parsers(sub, common)
    access.add_parsers(sub, common)
    audit.add_parsers(sub, common)
    demo.add_parser(sub)
    local.add_parsers(sub)
    data.add_parsers(sub)
    pki.add_parsers(sub)
    dev_grpc.add_parsers(sub)
    return parser


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that cleanup code runs as on Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE
"""The status a shell reports for a tool ended by SIGPIPE (``cmd | head``)."""


def _quiet_broken_pipe() -> int:
    """The reader of standard output went away (``fedstream runs list | head``): end quietly,
    as a Unix tool killed by SIGPIPE does. Standard output is pointed at /dev/null so that the
    interpreter's last flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_EXIT


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _run(argv: list[str] | None) -> int:
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
