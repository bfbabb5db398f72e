"""`fedstream data ...`: write small data sets for trying tasks on real files."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_generate_detection(args: argparse.Namespace) -> int:
    from fedstream.tasks.detection.data import generate_sites

    dirs = generate_sites(args.out, seed=args.seed, size=args.size, scale=args.scale)
    for d in dirs:
        train = len((d / "ImageSets/Main/train.txt").read_text().split())
        val = len((d / "ImageSets/Main/val.txt").read_text().split())
        print(f"{d}: {train} training and {val} held-out images (VOC layout)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    data = sub.add_parser("data", help="write small data sets").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser(
        "generate-detection",
        help="write FedVision-style detection data for sites A, B and C (VOC layout, each site its "
        "own backgrounds, lighting, object mix and image count)",
    )
    gen.add_argument("--out", type=Path, required=True, help="directory to write site-A, site-B, site-C into")
    gen.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    gen.add_argument("--size", type=int, default=96, help="image size in pixels (default 96)")
    gen.add_argument("--scale", type=float, default=1.0, help="multiplies each site's image count (default 1)")
    gen.set_defaults(func=cmd_generate_detection)
