"""Detection data on disk: Pascal VOC and COCO annotation layouts, and a seeded generator of
small VOC-layout data sets with a different visual domain per site.

VOC layout (one directory)::

    Annotations/<id>.xml        one per image: <size>, <object><name>, <difficult>, <bndbox>
    JPEGImages/<id>.jpg
    ImageSets/Main/train.txt    image ids, one per line (and val.txt / test.txt)

COCO layout: one JSON file (``images``, ``annotations`` with ``bbox`` = [x, y, w, h],
``categories``) and the images in a directory beside it (``images/`` by default).

Boxes come out as (x1, y1, x2, y2) in pixels of the original image, continuous coordinates:
VOC's 1-based inclusive pixel indices xmin..xmax become xmin - 1 .. xmax. A malformed
annotation raises AnnotationError naming the file and the field.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and the field."""


@dataclass
class Sample:
    image: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32, x1 y1 x2 y2 in image pixels
    labels: np.ndarray  # (n,) int64, indices into the data set's classes
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n,)


# VOC.


def _text(node: ET.Element, path: str, where: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise AnnotationError(f"{where}: missing field {path!r}")
    return found.text.strip()


def _number(node: ET.Element, path: str, where: str) -> float:
    raw = _text(node, path, where)
    try:
        value = float(raw)
    except ValueError:
        raise AnnotationError(f"{where}: field {path!r} is {raw!r}, not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: field {path!r} is {raw!r}, not a finite number")
    return value


def parse_voc_annotation(path: Path, classes: tuple[str, ...]) -> tuple[str, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(filename, width, height, boxes, labels, difficult) of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - local dataset files; Python 3.11's expat refuses entity-expansion bombs
    except (ET.ParseError, OSError) as e:
        raise AnnotationError(f"{path}: not readable XML ({e})") from None
    where = str(path)
    filename = _text(root, "filename", where)
    width = int(_number(root, "size/width", where))
    height = int(_number(root, "size/height", where))
    if width <= 0 or height <= 0:
        raise AnnotationError(f"{where}: field 'size' is {width}x{height}; both must be positive")
    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        at = f"{where}: object {i + 1}"
        name = _text(obj, "name", at)
        if name not in classes:
            raise AnnotationError(f"{at}: field 'name' is {name!r}, not one of {', '.join(classes)}")
        xmin, ymin = _number(obj, "bndbox/xmin", at), _number(obj, "bndbox/ymin", at)
        xmax, ymax = _number(obj, "bndbox/xmax", at), _number(obj, "bndbox/ymax", at)
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise AnnotationError(
                f"{at}: field 'bndbox' is ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}); it must satisfy "
                f"1 <= xmin <= xmax <= {width} and 1 <= ymin <= ymax <= {height}"
            )
        flag = obj.find("difficult")
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        labels.append(classes.index(name))
    return (
        filename, width, height,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(difficult, dtype=bool),
    )


def load_voc(root: Path, split: str, classes: tuple[str, ...]) -> list[Sample]:
    """The samples of ``ImageSets/Main/<split>.txt`` under ``root``."""
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise AnnotationError(f"{listing}: no such image set (a VOC directory has ImageSets/Main/{split}.txt)")
    samples = []
    for line_no, line in enumerate(listing.read_text().splitlines(), 1):
        image_id = line.split()[0] if line.strip() else ""
        if not image_id:
            continue
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise AnnotationError(f"{listing}: line {line_no}: no annotation {xml}")
        filename, width, height, boxes, labels, difficult = parse_voc_annotation(xml, classes)
        image = root / "JPEGImages" / filename
        if not image.is_file():
            raise AnnotationError(f"{xml}: field 'filename' names {image}, which does not exist")
        samples.append(Sample(image, width, height, boxes, labels, difficult))
    return samples


def write_voc_annotation(path: Path, filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """Writes one VOC XML file; boxes as VOC's 1-based inclusive (xmin, ymin, xmax, ymax)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, (xmin, ymin, xmax, ymax) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="unicode")


# COCO.


def load_coco(annotations: Path, classes: tuple[str, ...], images_dir: Path | None = None) -> list[Sample]:
    """The samples of a COCO instances file; categories are mapped to ``classes`` by name.
    Crowd annotations (iscrowd = 1) are kept as difficult boxes."""
    annotations = Path(annotations)
    images_dir = Path(images_dir) if images_dir else annotations.parent / "images"
    try:
        doc = json.loads(annotations.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{annotations}: not readable JSON ({e})") from None
    where = str(annotations)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise AnnotationError(f"{where}: field {key!r} is missing or not a list")
    names: dict[int, int] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{where}: categories[{i}] needs an integer 'id' and a string 'name'")
        if cat["name"] not in classes:
            raise AnnotationError(f"{where}: categories[{i}].name is {cat['name']!r}, not one of {', '.join(classes)}")
        names[cat["id"]] = classes.index(cat["name"])
    images: dict[int, dict[str, object]] = {}
    for i, im in enumerate(doc["images"]):
        ok = isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
        if not ok or not all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height")):
            raise AnnotationError(f"{where}: images[{i}] needs an integer 'id', a 'file_name' and positive integer 'width' and 'height'")
        images[im["id"]] = {"im": im, "boxes": [], "labels": [], "crowd": []}
    for i, ann in enumerate(doc["annotations"]):
        at = f"{where}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{at} is not an object")
        entry = images.get(ann.get("image_id"))  # type: ignore[arg-type]
        if entry is None:
            raise AnnotationError(f"{at}.image_id is {ann.get('image_id')!r}, not an image of the file")
        if ann.get("category_id") not in names:
            raise AnnotationError(f"{at}.category_id is {ann.get('category_id')!r}, not a category of the file")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise AnnotationError(f"{at}.bbox is {bbox!r}, not [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        im = entry["im"]
        assert isinstance(im, dict)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > im["width"] + 1e-6 or y + h > im["height"] + 1e-6:
            raise AnnotationError(f"{at}.bbox is {bbox!r}: outside the {im['width']}x{im['height']} image or empty")
        entry["boxes"].append((x, y, x + w, y + h))  # type: ignore[attr-defined]
        entry["labels"].append(names[ann["category_id"]])  # type: ignore[attr-defined]
        entry["crowd"].append(bool(ann.get("iscrowd", 0)))  # type: ignore[attr-defined]
    samples = []
    for entry in images.values():
        im = entry["im"]
        assert isinstance(im, dict)
        path = images_dir / im["file_name"]
        if not path.is_file():
            raise AnnotationError(f"{where}: image {im['id']}: file_name names {path}, which does not exist")
        samples.append(Sample(
            path, im["width"], im["height"],
            np.asarray(entry["boxes"], dtype=np.float32).reshape(-1, 4),
            np.asarray(entry["labels"], dtype=np.int64),
            np.asarray(entry["crowd"], dtype=bool),
        ))
    return samples


def voc_to_coco(root: Path, split: str, classes: tuple[str, ...], out: Path) -> None:
    """Writes the VOC split as a COCO instances file whose images are the VOC JPEGImages."""
    samples = load_voc(root, split, classes)
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "file_name": s.image.name, "width": s.width, "height": s.height})
        for box, label in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def load_dataset(path: Path, split: str, classes: tuple[str, ...]) -> list[Sample]:
    """VOC when ``path`` is a directory; COCO when it is a JSON file (``<split>`` ignored),
    or a directory holding ``annotations/instances_<split>.json``."""
    path = Path(path)
    coco = path / "annotations" / f"instances_{split}.json"
    if path.is_file():
        return load_coco(path, classes)
    if coco.is_file():
        return load_coco(coco, classes, path / "images")
    return load_voc(path, split, classes)


# A seeded generator of small data sets.

SHAPES = ("circle", "square", "triangle")
# The shapes under three of Pascal VOC's class names: generated data for the full-size
# `fedvision` task, whose head has VOC's 20 classes.
VOC_NAMES = ("bottle", "tvmonitor", "pottedplant")


@dataclass(frozen=True)
class SiteDomain:
    """How one site's cameras see the world."""

    name: str
    background: str  # "plain", "gradient", "noise" or "stripes"
    base_colour: tuple[int, int, int]
    brightness: float  # multiplies the image
    contrast: float  # scales around the mean
    class_weights: tuple[float, ...]  # how often each shape appears
    images: int
    noise: float = 6.0


# Three camera owners with their own scenes: A indoor and bright with mostly circles, B
# outdoor dusk with mostly squares, C a noisy industrial site with mostly triangles.
DEFAULT_SITES = (
    SiteDomain("A", "plain", (200, 190, 170), 1.15, 1.0, (0.6, 0.25, 0.15), 120),
    SiteDomain("B", "gradient", (70, 90, 130), 0.7, 0.8, (0.15, 0.6, 0.25), 90),
    SiteDomain("C", "stripes", (110, 120, 100), 1.0, 1.3, (0.2, 0.2, 0.6), 150, noise=14.0),
)


def _background(rng: np.random.Generator, d: SiteDomain, size: int) -> np.ndarray:
    base = np.array(d.base_colour, dtype=np.float32) + rng.normal(0, 12, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if d.background == "gradient":
        ramp = np.linspace(-40, 40, size, dtype=np.float32)
        img += ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
    elif d.background == "stripes":
        period = int(rng.integers(6, 14))
        stripes = ((np.arange(size) // period) % 2 * 30 - 15).astype(np.float32)
        img += stripes[None, :, None] if rng.random() < 0.5 else stripes[:, None, None]
    elif d.background == "noise":
        img += rng.normal(0, 25, (size // 8 + 1, size // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:size, :size]
    return img


def _draw(img: np.ndarray, shape: str, box: tuple[int, int, int, int], colour: np.ndarray) -> None:
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[y1:y2, x1:x2]
    w, h = x2 - x1, y2 - y1
    if shape == "square":
        mask = np.ones_like(xs, dtype=bool)
    elif shape == "circle":
        mask = ((xs + 0.5 - (x1 + w / 2)) / (w / 2)) ** 2 + ((ys + 0.5 - (y1 + h / 2)) / (h / 2)) ** 2 <= 1.0
    else:  # triangle, apex up
        rel_y = (ys + 0.5 - y1) / h
        mask = np.abs(xs + 0.5 - (x1 + w / 2)) <= rel_y * w / 2
    img[y1:y2, x1:x2][mask] = colour


def generate_site(root: Path, domain: SiteDomain, seed: int, size: int = 96, heldout_fraction: float = 0.25,
                  names: tuple[str, ...] = SHAPES) -> None:
    """Writes one site's data set in VOC layout: JPEG images of ``size`` pixels with one to
    three shapes each, annotations, and train/val image sets. ``names``: the class name each
    shape of ``SHAPES`` is annotated as (``VOC_NAMES`` for a task on Pascal VOC's classes)."""
    from PIL import Image

    rng = np.random.default_rng([seed, ord(domain.name[0])])
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    weights = np.asarray(domain.class_weights, dtype=np.float64)
    ids = []
    for n in range(domain.images):
        image_id = f"{domain.name}{n:05d}"
        img = _background(rng, domain, size)
        objects: list[tuple[str, tuple[int, int, int, int]]] = []
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(20):
                side = int(rng.integers(size // 6, int(size // 2.5)))
                aspect = float(rng.uniform(0.8, 1.25))
                w, h = side, max(4, min(size - 1, int(side * aspect)))
                x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                box = (x1, y1, x1 + w, y1 + h)
                if all(box[2] <= p[0] or p[2] <= box[0] or box[3] <= p[1] or p[3] <= box[1] for p in placed):
                    break
            else:
                continue
            shape = SHAPES[int(rng.choice(len(SHAPES), p=weights / weights.sum()))]
            colour = rng.integers(0, 256, 3).astype(np.float32)
            # Keep the shape visible against its background.
            if np.abs(colour - img[y1:y1 + h, x1:x1 + w].mean(axis=(0, 1))).sum() < 120:
                colour = 255 - colour
            _draw(img, shape, box, colour)
            placed.append(box)
            objects.append((names[SHAPES.index(shape)], (box[0] + 1, box[1] + 1, box[2], box[3])))
        mean = img.mean()
        img = (img - mean) * domain.contrast + mean
        img = img * domain.brightness + rng.normal(0, domain.noise, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
        write_voc_annotation(root / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", size, size, objects)
        ids.append(image_id)
    order = rng.permutation(len(ids))
    cut = int(round(len(ids) * heldout_fraction))
    val = sorted(ids[i] for i in order[:cut])
    train = sorted(ids[i] for i in order[cut:])
    (root / "ImageSets/Main/train.txt").write_text("".join(f"{i}\n" for i in train))
    (root / "ImageSets/Main/val.txt").write_text("".join(f"{i}\n" for i in val))


def generate_sites(out: Path, seed: int = 0, size: int = 96, scale: float = 1.0,
                   sites: tuple[SiteDomain, ...] = DEFAULT_SITES, names: tuple[str, ...] = SHAPES) -> list[Path]:
    """Writes every site's data set under ``out/site-<name>``; ``scale`` multiplies the image
    counts, ``names`` as for ``generate_site``. Returns the directories."""
    dirs = []
    for d in sites:
        domain = SiteDomain(**{**d.__dict__, "images": max(8, int(round(d.images * scale)))})
        path = Path(out) / f"site-{d.name}"
        generate_site(path, domain, seed, size, names=names)
        dirs.append(path)
    return dirs
