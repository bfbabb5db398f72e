"""Detection metrics: Pascal VOC mAP@0.5 (all-point interpolation) and COCO-style
mAP@[.5:.95] (101-point interpolation), in numpy.

Both take, per image, ground truth (``boxes`` (n, 4) x1 y1 x2 y2, ``labels``, optionally
``difficult`` flags, which VOC neither rewards nor penalises) and detections (``boxes``,
``scores``, ``labels``). Detections are matched per class in descending score order (the
rules of each benchmark's own code, see ``_match``); a second detection of a matched box is
a false positive. Classes without ground truth are left out of the mean; with no ground truth
at all the mAP is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageResult:
    gt_boxes: np.ndarray  # (n, 4)
    gt_labels: np.ndarray  # (n,)
    det_boxes: np.ndarray  # (m, 4)
    det_scores: np.ndarray  # (m,)
    det_labels: np.ndarray  # (m,)
    gt_difficult: np.ndarray | None = None  # (n,) bool


def image_result(gt: dict[str, Any], det: dict[str, Any]) -> ImageResult:
    def arr(x: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        a = np.asarray(x.cpu().numpy() if hasattr(x, "cpu") else x, dtype=dtype)
        return a.reshape(shape) if a.size == 0 else a

    difficult = gt.get("difficult")
    return ImageResult(
        arr(gt["boxes"], (0, 4), np.float64), arr(gt["labels"], (0,), np.int64),
        arr(det["boxes"], (0, 4), np.float64), arr(det["scores"], (0,), np.float64),
        arr(det["labels"], (0,), np.int64),
        None if difficult is None else arr(difficult, (0,), bool),
    )


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iou: np.ndarray = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)
    return iou


def _match(
    images: Sequence[ImageResult], cls: int, threshold: float, max_per_image: int | None, voc: bool
) -> tuple[np.ndarray, int]:
    """True-positive flags of the class's counted detections in descending score order, and
    the number of ground-truth boxes that count. Matching within an image in its own score
    order is the same as in the global order, since boxes only match within their image.

    VOC (its devkit): a detection goes to the box it overlaps most, matched or not, if the IoU
    exceeds the threshold; a box matched already makes it a false positive. COCO: it goes to
    the unmatched box it overlaps most, if the IoU reaches the threshold."""
    scores: list[float] = []
    flags: list[bool] = []
    npos = 0
    for im in images:
        g = im.gt_labels == cls
        gt_boxes = im.gt_boxes[g]
        difficult = im.gt_difficult[g] if im.gt_difficult is not None else np.zeros(len(gt_boxes), bool)
        npos += int((~difficult).sum())
        d = np.flatnonzero(im.det_labels == cls)
        d = d[np.argsort(-im.det_scores[d], kind="stable")]
        if max_per_image is not None:
            d = d[:max_per_image]
        ious = _iou(im.det_boxes[d], gt_boxes) if len(gt_boxes) and len(d) else np.zeros((len(d), len(gt_boxes)))
        matched = np.zeros(len(gt_boxes), bool)
        for k in range(len(d)):
            hit = False
            if len(gt_boxes):
                candidates = ious[k] if voc else np.where(matched, -1.0, ious[k])
                j = int(np.argmax(candidates))
                if candidates[j] > threshold or (not voc and candidates[j] >= threshold):
                    if difficult[j]:
                        continue  # a difficult box: neither a true nor a false positive
                    hit = not matched[j]
                    matched[j] = True
            scores.append(float(im.det_scores[d[k]]))
            flags.append(hit)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(flags, dtype=bool)[order], npos


def _precision_recall(flags: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    tp = np.cumsum(flags)
    fp = np.cumsum(~flags)
    recall = tp / max(npos, 1)
    precision = tp / np.maximum(tp + fp, 1e-12)
    return precision, recall


def voc_ap(images: Sequence[ImageResult], cls: int, threshold: float = 0.5) -> float | None:
    """VOC AP of one class (all-point interpolation, VOC 2010 onwards); None without
    ground truth of the class."""
    flags, npos = _match(images, cls, threshold, None, voc=True)
    if npos == 0:
        return None
    precision, recall = _precision_recall(flags, npos)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def coco_ap(images: Sequence[ImageResult], cls: int, threshold: float, max_per_image: int = 100) -> float | None:
    """COCO AP of one class at one IoU threshold: precision (made monotone) read at 101 recall
    points, unreached recall counting 0; None without ground truth of the class."""
    flags, npos = _match(images, cls, threshold, max_per_image, voc=False)
    if npos == 0:
        return None
    precision, recall = _precision_recall(flags, npos)
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    values = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(values.mean())


def _classes(images: Sequence[ImageResult], num_classes: int | None) -> list[int]:
    if num_classes is not None:
        return list(range(num_classes))
    seen: set[int] = set()
    for im in images:
        seen.update(im.gt_labels.tolist())
        seen.update(im.det_labels.tolist())
    return sorted(seen)


def voc_map(images: Sequence[ImageResult], num_classes: int | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """{"map": mean AP over classes with ground truth, "ap": {class: AP or None}}."""
    aps = {c: voc_ap(images, c, threshold) for c in _classes(images, num_classes)}
    valid = [a for a in aps.values() if a is not None]
    return {"map": float(np.mean(valid)) if valid else 0.0, "ap": aps}


def coco_map(images: Sequence[ImageResult], num_classes: int | None = None) -> dict[str, Any]:
    """{"map": mean over classes with ground truth of the mean AP over IoU 0.50:0.05:0.95,
    "map50": the same at 0.5 alone, "ap": {class: mean AP or None}}."""
    aps: dict[int, float | None] = {}
    ap50: list[float] = []
    for c in _classes(images, num_classes):
        per = [coco_ap(images, c, float(t)) for t in COCO_IOU_THRESHOLDS]
        if per[0] is None:
            aps[c] = None
            continue
        values = [float(v) for v in per if v is not None]
        aps[c] = float(np.mean(values))
        ap50.append(values[0])
    valid = [a for a in aps.values() if a is not None]
    return {
        "map": float(np.mean(valid)) if valid else 0.0,
        "map50": float(np.mean(ap50)) if ap50 else 0.0,
        "ap": aps,
    }
