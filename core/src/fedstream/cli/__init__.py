"""The fedstream command-line tool."""

from __future__ import annotations

import argparse
import sys

from fedstream.cli import demo, runs
from fedstream.memtune import tune_allocator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedstream",
        description="fedstream: federated learning for computer vision. Run a local demo, start "
        "and follow runs on a scheduler, download model versions.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    runs.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
