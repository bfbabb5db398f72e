"""Box arithmetic for the detector: IoU, generalised IoU, non-maximum suppression.

Boxes are (x1, y1, x2, y2) in pixels, continuous coordinates (a box from 0 to 10 is 10 wide).
"""

from __future__ import annotations

import torch


def area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) intersection over union."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union.clamp(min=1e-9)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired boxes (same shape, ..., 4): IoU minus the share of the
    smallest enclosing box that neither covers; in [-1, 1]."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area(a) + area(b) - inter
    iou = inter / union.clamp(min=1e-9)
    enclose = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(dim=-1)
    return iou - (enclose - union) / enclose.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, best score first: greedily keeps the best remaining box and
    drops every other whose IoU with it exceeds ``iou_threshold``."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    overlaps = iou_matrix(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each label separately; indices kept, best score first."""
    keep = [
        torch.nonzero(labels == c).flatten()[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
        for c in torch.unique(labels)
    ]
    if not keep:
        return torch.zeros(0, dtype=torch.long)
    kept = torch.cat(keep)
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]
