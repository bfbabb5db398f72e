"""FedReID's model in plain PyTorch: a ResNet backbone, global average pooling, a 512-d
bottleneck (linear, BatchNorm, dropout 0.5) and a site's private identity classifier.

ResNet-50 at full size (bottleneck blocks [3, 4, 6, 3], last stride 1 as in re-ID baselines);
narrow variants for CPU. Shared with the federation: ``backbone.*`` and ``bottleneck.*``,
BatchNorm running statistics included; private to a site: ``classifier.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        result: torch.Tensor = self.relu(self.bn3(self.conv3(out)) + identity)
        return result


@dataclass(frozen=True)
class ReIDConfig:
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    base_width: int = 64
    last_stride: int = 1
    embedding: int = 512
    dropout: float = 0.5
    height: int = 256
    width: int = 128


class ResNetBackbone(nn.Module):
    def __init__(self, config: ReIDConfig) -> None:
        super().__init__()
        w = config.base_width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers = []
        cin = w
        for i, (n, stride) in enumerate(zip(config.blocks, (1, 2, 2, config.last_stride), strict=True)):
            width = w * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, width, stride if j == 0 else 1))
                cin = width * Bottleneck.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


class ReIDNet(nn.Module):
    def __init__(self, config: ReIDConfig, num_ids: int) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetBackbone(config)
        linear = nn.Linear(self.backbone.out_channels, config.embedding)
        self.bottleneck = nn.Sequential(linear, nn.BatchNorm1d(config.embedding), nn.Dropout(config.dropout))
        nn.init.kaiming_normal_(linear.weight, a=0, mode="fan_out")
        nn.init.zeros_(linear.bias)
        self.classifier = nn.Linear(config.embedding, max(1, num_ids))
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The 512-d embedding (after the bottleneck's BatchNorm and, in training, dropout)."""
        embedding: torch.Tensor = self.bottleneck(self.backbone(images))
        return embedding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Identity logits of this site's classifier."""
        logits: torch.Tensor = self.classifier(self.embed(images))
        return logits
