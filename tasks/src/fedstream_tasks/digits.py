"""Handwritten digits: a small CNN on scikit-learn's bundled 8x8 digit images (real data),
split across sites by a seeded Dirichlet partition over labels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from fedstream_tasks.base import SiteDataSettings, Task

HELDOUT_FRACTION = 0.2
MIN_SITE_EXAMPLES = 20


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x))
        return logits


@dataclass
class DigitsData:
    images: torch.Tensor  # (n, 1, 8, 8) float32 in [0, 1]
    labels: torch.Tensor  # (n,) int64


@lru_cache(maxsize=4)
def _split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    heldout: list[int] = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        heldout.extend(idx[: int(round(len(idx) * HELDOUT_FRACTION))])
    mask = np.zeros(len(y), dtype=bool)
    mask[heldout] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def dirichlet_partition(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Indices of each site: per label, proportions drawn from Dirichlet(alpha). Redrawn until
    every site has at least MIN_SITE_EXAMPLES examples (or as many as can be had)."""
    rng = np.random.default_rng(seed + 1)
    floor = min(MIN_SITE_EXAMPLES, len(labels) // num_sites)
    for _ in range(1000):
        sites: list[list[int]] = [[] for _ in range(num_sites)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_sites)) * len(idx)).astype(int)[:-1]
            for site, part in enumerate(np.split(idx, cuts)):
                sites[site].extend(part.tolist())
        if min(len(s) for s in sites) >= floor:
            return [np.sort(np.array(s, dtype=np.int64)) for s in sites]
    raise ValueError(f"cannot partition {len(labels)} examples over {num_sites} sites")


class DigitsTask(Task):
    name = "digits"
    metrics = ("accuracy", "loss")
    # Under FedPav each site keeps its own last layer (the classifier over the ten digits).
    private_prefixes = ("head.3.",)

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return DigitsCNN()

    def load_site(self, settings: SiteDataSettings) -> DigitsData:
        if settings.site_index >= settings.num_sites:
            raise ValueError(
                f"site_index {settings.site_index} must be below num_sites {settings.num_sites}"
            )
        x, y, _, _ = _split(settings.partition_seed)
        parts = dirichlet_partition(y, settings.num_sites, settings.partition_alpha, settings.partition_seed)
        idx = parts[settings.site_index]
        return DigitsData(torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(y[idx]))

    def load_heldout(self, settings: SiteDataSettings) -> DigitsData:
        _, _, x, y = _split(settings.partition_seed)
        return DigitsData(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y))

    def num_examples(self, data: DigitsData) -> int:
        return len(data.labels)

    def batches(self, data: DigitsData, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data.labels), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            if len(batch) >= 2:  # BatchNorm needs more than one example
                yield data.images[batch], data.labels[batch]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int]:
        images, labels = batch
        return nn.functional.cross_entropy(model(images.to(device)), labels.to(device)), len(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: DigitsData, device: torch.device) -> dict[str, float]:
        model.to(device).eval()
        logits = model(data.images.to(device))
        labels = data.labels.to(device)
        loss = nn.functional.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return {"accuracy": accuracy, "loss": loss, "examples": float(len(labels))}
