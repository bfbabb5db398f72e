"""``--version`` for console scripts: the installed distribution's version, from its metadata."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def distribution_version(distribution: str) -> str:
    """The installed version of ``distribution`` (e.g. ``fedstream-aggregator``); ``unknown``
    when it is not installed (sources run from a checkout)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def add_version_argument(parser: argparse.ArgumentParser, distribution: str) -> None:
    """Adds ``--version``, which prints ``<prog> <version>`` to standard output and exits 0."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {distribution_version(distribution)}",
        help="print the version and exit",
    )
