"""`fedstream data ...`: write small data sets for trying tasks on real files."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_generate_detection(args: argparse.Namespace) -> int:
    from fedstream_tasks.detection.data import generate_sites

    dirs = generate_sites(args.out, seed=args.seed, size=args.size, scale=args.scale)
    for d in dirs:
        train = len((d / "ImageSets/Main/train.txt").read_text().split())
        val = len((d / "ImageSets/Main/val.txt").read_text().split())
        print(f"{d}: {train} training and {val} held-out images (VOC layout)")
    return 0


def cmd_generate_reid(args: argparse.Namespace) -> int:
    from fedstream_tasks.reid.data import DEFAULT_SITES, SiteSpec, generate_sites

    if args.scale <= 0:
        raise SystemExit("--scale must be positive")
    sites = tuple(
        SiteSpec(s.name, max(3, round(s.identities * args.scale)), s.cameras, s.images_per_camera) for s in DEFAULT_SITES
    )
    dirs, public = generate_sites(args.out, seed=args.seed, sites=sites, height=args.height, width=args.width,
                                  public_images=args.public_images)
    for d, spec in zip(dirs, sites, strict=True):
        counts = {split: sum(1 for _ in (d / split).iterdir()) for split in ("bounding_box_train", "query", "bounding_box_test")}
        print(f"{d}: {spec.identities} identities, {spec.cameras} cameras; {counts['bounding_box_train']} training, "
              f"{counts['query']} query and {counts['bounding_box_test']} gallery images (Market-1501 layout)")
    print(f"{public}: {args.public_images} unlabeled public images (for the aggregator's distillation)")
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
    reid = data.add_parser(
        "generate-reid",
        help="write FedReID-style person re-identification data for four sites of very different "
        "sizes (Market-1501 layout, disjoint identities, each site its own camera styles) and an "
        "unlabeled public set",
    )
    reid.add_argument("--out", type=Path, required=True,
                      help="directory to write market/, duke/, cuhk/, viper/ and public/ into")
    reid.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    reid.add_argument("--scale", type=float, default=1.0, help="multiplies each site's identity count (default 1)")
    reid.add_argument("--height", type=int, default=64, help="image height in pixels (default 64)")
    reid.add_argument("--width", type=int, default=32, help="image width in pixels (default 32)")
    reid.add_argument("--public-images", type=int, default=64, help="images in the public set (default 64)")
    reid.set_defaults(func=cmd_generate_reid)
