"""The detection task: FedVision's sites train one detector without sharing images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedstream_tasks.base import SiteDataSettings, Task
from fedstream_tasks.detection.data import SHAPES, Sample, load_dataset
from fedstream_tasks.detection.loss import detection_loss
from fedstream_tasks.detection.metrics import coco_map, image_result, voc_map
from fedstream_tasks.detection.model import Detector, DetectorConfig, decode

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass(frozen=True)
class Preset:
    classes: tuple[str, ...]
    input_size: int
    width: float
    depth: int


PRESETS = {
    # CPU tests: 64-pixel images, a quarter-width backbone (~40 k parameters).
    "tiny": Preset(SHAPES, 64, 0.25, 1),
    # The comparison of docs/fedvision.md on CPU.
    "small": Preset(SHAPES, 96, 0.5, 1),
    # Full size, for GPUs: Pascal VOC's 20 classes at 416 pixels, full-width backbone.
    "full": Preset(VOC_CLASSES, 416, 1.0, 3),
}


@dataclass
class DetectionData:
    images: torch.Tensor  # (n, 3, S, S) uint8, resized to the input size
    targets: list[dict[str, torch.Tensor]]  # boxes (in input pixels), labels, difficult
    samples: list[Sample]


def read_image(path: Path, size: int) -> tuple[torch.Tensor, int, int]:
    """(3, size, size) uint8 RGB, and the original width and height."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        width, height = rgb.size
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1), width, height


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Each image standardised by its own mean and spread: what a camera's exposure and
    contrast do to an image is taken out before the network sees it."""
    x = images.float() / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + 0.05)


class DetectionTask(Task):
    """A preset of ``PRESETS`` or explicit classes and sizes. Site data: a VOC directory
    (train split for training, val — or test — for held-out) or a COCO file/directory,
    at ``FEDSTREAM_AGENT_DATA__PATH``."""

    metrics = ("map50", "map")

    def __init__(self, preset: str = "tiny", *, classes: Sequence[str] | None = None,
                 input_size: int | None = None, width: float | None = None, depth: int | None = None) -> None:
        base = PRESETS[preset]
        self.name = "fedvision" if preset == "full" else f"fedvision-{preset}"
        self.classes = tuple(classes) if classes else base.classes
        self.config = DetectorConfig(
            num_classes=len(self.classes),
            input_size=input_size or base.input_size,
            width=width or base.width,
            depth=base.depth if depth is None else depth,
        )

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return Detector(self.config)

    def _load(self, settings: SiteDataSettings, splits: tuple[str, ...]) -> DetectionData:
        if settings.path is None:
            raise ValueError(
                f"task {self.name} needs the site's data set: set FEDSTREAM_AGENT_DATA__PATH to a VOC "
                "directory or a COCO file (`fedstream data generate-detection` writes small ones)"
            )
        last: Exception | None = None
        for split in splits:
            try:
                samples = load_dataset(settings.path, split, self.classes)
                break
            except ValueError as e:
                last = e
        else:
            assert last is not None
            raise last
        return self.prepare(samples)

    def prepare(self, samples: list[Sample]) -> DetectionData:
        """Decodes and resizes every image once; boxes follow into input pixels."""
        size = self.config.input_size
        images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
        targets = []
        for i, s in enumerate(samples):
            images[i], width, height = read_image(s.image, size)
            scale = np.array([size / width, size / height] * 2, dtype=np.float32)
            targets.append({
                "boxes": torch.from_numpy(s.boxes * scale),
                "labels": torch.from_numpy(s.labels),
                "difficult": torch.from_numpy(s.difficult),
            })
        return DetectionData(images, targets, samples)

    def load_site(self, settings: SiteDataSettings) -> DetectionData:
        return self._load(settings, ("train",))

    def load_heldout(self, settings: SiteDataSettings) -> DetectionData:
        return self._load(settings, ("val", "test"))

    def num_examples(self, data: DetectionData) -> int:
        return len(data.targets)

    def batches(self, data: DetectionData, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """Shuffled batches, each image flipped left-right with probability 1/2."""
        n = len(data.targets)
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        size = self.config.input_size
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one example
                continue
            images = data.images[idx].clone()
            targets = []
            for k, j in enumerate(idx.tolist()):
                t = data.targets[j]
                boxes = t["boxes"]
                if flips[j]:
                    images[k] = images[k].flip(2)
                    boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
                targets.append({"boxes": boxes, "labels": t["labels"]})
            yield images, targets

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        images, targets = batch
        return detection_loss(model(normalise(images.to(device))), targets, self.config.num_classes), len(targets)

    def outputs(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """Class logits of every cell, one row per image."""
        out = model(normalise(batch[0].to(device)))
        logits: torch.Tensor = out[:, 1 : 1 + self.config.num_classes].flatten(1)
        return logits

    @torch.no_grad()
    def detect(self, model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
        """Detections (in input pixels) of (n, 3, S, S) uint8 images."""
        model.to(device).eval()
        found: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(images), batch_size):
            out = model(normalise(images[i : i + batch_size].to(device)))
            found.extend({k: v.cpu() for k, v in d.items()} for d in decode(out, self.config))
        return found

    def evaluate(self, model: nn.Module, data: DetectionData, device: torch.device) -> dict[str, float]:
        """VOC mAP@0.5 (``map50``) and COCO mAP@[.5:.95] (``map``) over the data."""
        detections = self.detect(model, data.images, device)
        results = [image_result(t, d) for t, d in zip(data.targets, detections, strict=True)]
        return {
            "map50": voc_map(results, self.config.num_classes)["map"],
            "map": coco_map(results, self.config.num_classes)["map"],
            "examples": float(len(results)),
        }

    def predict(self, model: nn.Module, paths: Sequence[Path], device: torch.device) -> list[dict[str, Any]]:
        """Per image file: its detections in the image's own pixels, with class names."""
        size = self.config.input_size
        out = []
        for path in paths:
            image, width, height = read_image(path, size)
            (d,) = self.detect(model, image[None], device)
            scale = torch.tensor([width / size, height / size] * 2)
            out.append({
                "image": str(path),
                "width": width,
                "height": height,
                "detections": [
                    {"label": self.classes[int(c)], "score": round(float(s), 5),
                     "box": [round(float(v), 2) for v in (b * scale).tolist()]}
                    for b, s, c in zip(d["boxes"], d["scores"], d["labels"], strict=True)
                ],
            })
        return out
