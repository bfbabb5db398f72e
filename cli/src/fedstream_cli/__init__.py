"""The fedstream command-line tool."""

from __future__ import annotations

import argparse
import signal
import sys

from fedstream.memtune import tune_allocator
from fedstream_cli import admin, data, demo, pki, runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedstream",
        description="fedstream: federated learning for computer vision. Run a local demo; drive a "
        "control plane through its admin API (login, federations, runs, models, plot); start and "
        "follow runs over gRPC (run, model); write sample data sets; make a tenant's certificate authority (pki).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    admin.add_parsers(sub)
    runs.add_parsers(sub)
    data.add_parsers(sub)
    pki.add_parsers(sub)
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
    except admin.ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return admin.ERRORS_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
