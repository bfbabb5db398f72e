"""Person re-identification data in the Market-1501 layout, and a seeded generator of small
multi-site data sets in that layout.

Layout (also what DukeMTMC-reID and MSMT17 conversions use)::

    bounding_box_train/  <pid>_c<cam>[s<seq>]_<rest>.jpg   training images
    query/                                                 query images
    bounding_box_test/                                     gallery images

The person id comes first (4 digits; ``-1`` marks junk detections, ``0000`` distractors), then
``c`` and the camera number. Training uses neither junk nor distractors and relabels person ids
0..n-1; evaluation excludes junk from the gallery and keeps distractors as negatives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(-1|\d+)_c(\d+)(?:s\d+)?_.*\.(jpg|jpeg|png)$", re.IGNORECASE)
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


class ReIDDataError(ValueError):
    """A file or directory that does not follow the Market-1501 convention; names it."""


@dataclass(frozen=True)
class Entry:
    path: Path
    pid: int  # -1 junk, 0 distractor
    cam: int


def parse_name(path: Path) -> Entry:
    m = NAME.match(path.name)
    if m is None:
        raise ReIDDataError(
            f"{path}: file name does not follow <person id>_c<camera>..._<n>.jpg "
            "(e.g. 0002_c1s1_000451_03.jpg)"
        )
    return Entry(path, int(m.group(1)), int(m.group(2)))


def read_split(root: Path, split: str) -> list[Entry]:
    directory = Path(root) / split
    if not directory.is_dir():
        raise ReIDDataError(f"{directory}: missing (a Market-1501 directory has {', '.join(SPLITS)})")
    return [parse_name(p) for p in sorted(directory.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]


def training_entries(root: Path) -> tuple[list[Entry], int]:
    """Training entries without junk and distractors, with person ids relabelled 0..n-1."""
    entries = [e for e in read_split(root, "bounding_box_train") if e.pid > 0]
    labels = {pid: i for i, pid in enumerate(sorted({e.pid for e in entries}))}
    return [Entry(e.path, labels[e.pid], e.cam) for e in entries], len(labels)


# A seeded generator of small sites.


@dataclass(frozen=True)
class CameraStyle:
    tint: tuple[float, float, float]
    brightness: float
    background: tuple[int, int, int]


def _person_colours(rng: np.random.Generator) -> np.ndarray:
    """Colours of head, torso, arms, legs and a bag of one identity."""
    return rng.integers(0, 256, (5, 3)).astype(np.float32)


def _render(rng: np.random.Generator, colours: np.ndarray, style: CameraStyle, h: int, w: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array(style.background, np.float32) + rng.normal(0, 10, 3)
    img += rng.normal(0, 8, (h, w, 1))
    # The person: jitter in position and scale, as a detector's boxes have.
    s = rng.uniform(0.85, 1.0)
    ph, pw = int(h * s), int(w * 0.6 * s)
    top = int(rng.integers(0, h - ph + 1))
    left = int(rng.integers(0, w - pw + 1))
    head = ph // 6
    torso = ph * 2 // 5
    img[top : top + head, left + pw // 3 : left + 2 * pw // 3] = colours[0]
    img[top + head : top + head + torso, left : left + pw] = colours[1]
    img[top + head : top + head + torso, left : left + pw // 8] = colours[2]
    img[top + head : top + head + torso, left + pw - pw // 8 : left + pw] = colours[2]
    img[top + head + torso : top + ph, left + pw // 6 : left + 5 * pw // 6] = colours[3]
    if colours[4].sum() > 384:  # some identities carry a bag
        img[top + head + torso // 3 : top + head + torso, left + pw - pw // 4 : left + pw] = colours[4]
    img = img * np.array(style.tint, np.float32) * style.brightness
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SiteSpec:
    name: str
    identities: int
    cameras: int
    images_per_camera: int = 2


# Sites of very different sizes, as in FedReID's benchmark (from 1,500 down to a few hundred
# identities there; scaled down here).
DEFAULT_SITES = (
    SiteSpec("market", 40, 4),
    SiteSpec("duke", 24, 3),
    SiteSpec("cuhk", 12, 2),
    SiteSpec("viper", 6, 2, 1),
)


def generate_sites(out: Path, seed: int = 0, sites: tuple[SiteSpec, ...] = DEFAULT_SITES,
                   height: int = 64, width: int = 32, public_images: int = 64) -> tuple[list[Path], Path]:
    """Writes each site in the Market-1501 layout under ``out/<name>`` (disjoint identities,
    the site's own camera styles; a third of each site's identities form its query/gallery
    split, one query per identity and camera but the last) and an unlabeled public set under ``out/public`` (identities of no site). Returns
    the site directories and the public directory."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = Path(out)
    next_pid = 1
    dirs = []
    for spec in sites:
        root = out / spec.name
        for split in SPLITS:
            (root / split).mkdir(parents=True, exist_ok=True)
        styles = [
            CameraStyle(tuple(rng.uniform(0.7, 1.3, 3)), float(rng.uniform(0.6, 1.2)),
                        tuple(rng.integers(30, 220, 3).tolist()))
            for _ in range(spec.cameras)
        ]
        test_ids = max(1, spec.identities // 3)
        for k in range(spec.identities):
            pid = next_pid
            next_pid += 1
            colours = _person_colours(rng)
            evaluation = k < test_ids
            for cam in range(spec.cameras):
                for n in range(spec.images_per_camera):
                    img = _render(rng, colours, styles[cam], height, width)
                    name = f"{pid:04d}_c{cam + 1}s1_{n:06d}_00.jpg"
                    if not evaluation:
                        split = "bounding_box_train"
                    else:  # the last camera's images all stay in the gallery: every query has a match
                        split = "query" if n == 0 and cam < spec.cameras - 1 else "bounding_box_test"
                    Image.fromarray(img).save(root / split / name, quality=92)
        # A distractor and a junk image in the gallery, as the real benchmark has.
        Image.fromarray(_render(rng, _person_colours(rng), styles[0], height, width)).save(
            root / "bounding_box_test" / "0000_c1s1_000000_00.jpg", quality=92)
        Image.fromarray(_render(rng, _person_colours(rng), styles[-1], height, width)).save(
            root / "bounding_box_test" / f"-1_c{spec.cameras}s1_000000_00.jpg", quality=92)
        dirs.append(root)
    public = out / "public"
    public.mkdir(parents=True, exist_ok=True)
    style = CameraStyle((1.0, 1.0, 1.0), 1.0, (128, 128, 128))
    for i in range(public_images):
        colours = _person_colours(rng)
        Image.fromarray(_render(rng, colours, style, height, width)).save(public / f"public_{i:05d}.jpg", quality=92)
    return dirs, public
