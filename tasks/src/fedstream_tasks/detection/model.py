"""A single-stage, anchor-free object detector in plain PyTorch.

Backbone: MobileNet-style depthwise-separable convolutions (FedVision used YOLOv3 with a
MobileNet backbone), channels scaled by ``width``, down to stride 8. Head: a shared tower,
then per cell an objectness logit, one logit per class and a box as log-distances from the
cell's centre to the four sides, in strides (FCOS-style). ``decode`` turns outputs into
boxes, scores and labels after per-class non-maximum suppression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedstream_tasks.detection.boxes import batched_nms

STRIDE = 8


def _channels(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BatchNorm (MobileNet v1's block)."""
    return nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1, 1))


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int
    input_size: int = 64
    width: float = 0.25
    # Extra stride-8 blocks at the end of the backbone (more capacity at full size).
    depth: int = 1
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


class Detector(nn.Module):
    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        if config.input_size % STRIDE:
            raise ValueError(f"input_size {config.input_size} must be a multiple of {STRIDE}")
        self.config = config
        c = [_channels(x, config.width) for x in (32, 64, 128, 256)]
        layers = [conv_bn(3, c[0], 3, 2), separable(c[0], c[1], 1), separable(c[1], c[2], 2),
                  separable(c[2], c[2], 1), separable(c[2], c[3], 2)]
        layers += [separable(c[3], c[3], 1) for _ in range(config.depth)]
        self.backbone = nn.Sequential(*layers)
        self.tower = nn.Sequential(conv_bn(c[3], c[3], 3, 1), conv_bn(c[3], c[3], 3, 1))
        self.objectness = nn.Conv2d(c[3], 1, 1)
        self.classes = nn.Conv2d(c[3], config.num_classes, 1)
        self.box = nn.Conv2d(c[3], 4, 1)
        # Start with every cell almost surely background (prior 0.01), as RetinaNet does.
        assert self.objectness.bias is not None and self.box.bias is not None  # Conv2d(bias=True)
        nn.init.constant_(self.objectness.bias, -4.6)
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.box.bias, 0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 5 + classes, S/8, S/8): objectness, class
        logits, then log-distances (left, top, right, bottom) in strides."""
        x = self.tower(self.backbone(images))
        return torch.cat([self.objectness(x), self.classes(x), self.box(x)], dim=1)


def cell_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(H*W, 2) pixel centres (x, y) of the output cells, row by row."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return (torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * STRIDE


def boxes_from_distances(centres: torch.Tensor, log_distances: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes from cell centres and predicted (left, top, right, bottom) log-distances."""
    d = torch.exp(log_distances.float().clamp(max=8.0)) * STRIDE
    return torch.cat([centres - d[:, :2], centres + d[:, 2:]], dim=1)


@torch.no_grad()
def decode(outputs: torch.Tensor, config: DetectorConfig) -> list[dict[str, torch.Tensor]]:
    """Per image: ``boxes`` (N, 4) clipped to the input, ``scores`` (objectness x class
    probability) and ``labels``, at most ``max_detections``, after per-class NMS."""
    b, _, h, w = outputs.shape
    centres = cell_centres(h, w, outputs.device)
    flat = outputs.float().permute(0, 2, 3, 1).reshape(b, h * w, -1)
    results = []
    for i in range(b):
        obj = torch.sigmoid(flat[i, :, 0])
        cls = torch.sigmoid(flat[i, :, 1 : 1 + config.num_classes])
        scores = obj[:, None] * cls
        cell, label = torch.nonzero(scores > config.score_threshold, as_tuple=True)
        s = scores[cell, label]
        if s.numel() > 10 * config.max_detections:
            top = torch.topk(s, 10 * config.max_detections).indices
            cell, label, s = cell[top], label[top], s[top]
        boxes = boxes_from_distances(centres[cell], flat[i, cell, 1 + config.num_classes :])
        boxes = boxes.clamp(min=0, max=config.input_size)
        keep = batched_nms(boxes.cpu(), s.cpu(), label.cpu(), config.nms_iou)[: config.max_detections]
        keep = keep.to(outputs.device)
        results.append({"boxes": boxes[keep], "scores": s[keep], "labels": label[keep]})
    return results
