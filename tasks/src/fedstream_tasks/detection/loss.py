"""The detector's targets and loss.

A cell is positive for a ground-truth box when its centre lies inside the box and within 1.5
strides of the box's centre (centre sampling); a box too small to hold any cell centre takes
the cell its centre falls in. A cell claimed by several boxes goes to the smallest. Loss per
image, normalised by the number of positives: binary cross-entropy of objectness over every
cell, of the class logits on positives, and 2 x (1 - GIoU) of the boxes on positives.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fedstream_tasks.detection.boxes import area, giou
from fedstream_tasks.detection.model import STRIDE, boxes_from_distances, cell_centres

CENTRE_RADIUS = 1.5 * STRIDE
BOX_WEIGHT = 2.0


def assign(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """For each cell, the index of the box it is positive for, or -1."""
    n = centres.shape[0]
    if boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=centres.device)
    x, y = centres[:, None, 0], centres[:, None, 1]
    inside = (x > boxes[None, :, 0]) & (x < boxes[None, :, 2]) & (y > boxes[None, :, 1]) & (y < boxes[None, :, 3])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near = ((x - cx[None]).abs() <= CENTRE_RADIUS) & ((y - cy[None]).abs() <= CENTRE_RADIUS)
    candidate = inside & near
    # A box that covers no cell centre takes the cell holding its own centre.
    side = int(round(n ** 0.5))
    for j in torch.nonzero(~candidate.any(dim=0)).flatten().tolist():
        col = int(cx[j].clamp(0, side * STRIDE - 1) // STRIDE)
        row = int(cy[j].clamp(0, side * STRIDE - 1) // STRIDE)
        candidate[row * side + col, j] = True
    areas = area(boxes)[None].expand(n, -1).masked_fill(~candidate, float("inf"))
    best_area, best = areas.min(dim=1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


def detection_loss(
    outputs: torch.Tensor, targets: list[dict[str, torch.Tensor]], num_classes: int
) -> torch.Tensor:
    """Mean over the batch of each image's loss (see the module's docstring)."""
    b, _, h, w = outputs.shape
    if h != w:
        raise ValueError("the detector's output grid must be square")
    centres = cell_centres(h, w, outputs.device)
    flat = outputs.float().permute(0, 2, 3, 1).reshape(b, h * w, -1)
    total = outputs.new_zeros((), dtype=torch.float32)
    for i, target in enumerate(targets):
        boxes, labels = target["boxes"].to(outputs.device).float(), target["labels"].to(outputs.device)
        owner = assign(centres, boxes)
        pos = owner >= 0
        npos = max(int(pos.sum()), 1)
        obj_loss = F.binary_cross_entropy_with_logits(flat[i, :, 0], pos.float(), reduction="sum")
        loss = obj_loss / npos
        if pos.any():
            onehot = F.one_hot(labels[owner[pos]], num_classes).float()
            cls_loss = F.binary_cross_entropy_with_logits(flat[i, pos, 1 : 1 + num_classes], onehot, reduction="sum")
            predicted = boxes_from_distances(centres[pos], flat[i, pos, 1 + num_classes :])
            box_loss = (1 - giou(predicted, boxes[owner[pos]])).sum()
            loss = loss + (cls_loss + BOX_WEIGHT * box_loss) / npos
        total = total + loss
    return total / max(b, 1)
