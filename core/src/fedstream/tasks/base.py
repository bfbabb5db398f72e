"""The task interface: what agents and the demo's evaluation need from a workload."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field


class SiteDataSettings(BaseModel):
    """Where a site's data comes from. Tasks with bundled data use the partition fields."""

    path: Path | None = Field(None, description="Directory holding the site's data set.")
    site_index: int = Field(0, ge=0, description="This site's slice of a partitioned data set.")
    num_sites: int = Field(1, ge=1, description="How many sites the data set is partitioned over.")
    partition_alpha: float = Field(
        0.5, gt=0, description="Dirichlet concentration over labels (smaller is less IID)."
    )
    partition_seed: int = Field(0, ge=0, description="Seed of the partition and the held-out split.")


@dataclass
class TrainParams:
    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    # FedProx: mu/2 * ||w - w_global||^2 is added to the local loss when positive.
    proximal_mu: float = 0.0


def proximal_term(model: torch.nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * the squared distance of the model's parameters from ``anchor`` (FedProx)."""
    total = torch.zeros((), device=anchor[0].device if anchor else None)
    for p, a in zip(model.parameters(), anchor, strict=True):
        total = total + (p - a).pow(2).sum()
    return 0.5 * mu * total


def cosine_distance(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean over a batch of 1 - cos(logits before local training, logits after): FedReID's
    measure of how far an agent moved the model."""
    cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=1)
    return float((1 - cos).mean().item())


@dataclass
class TrainResult:
    num_examples: int
    metrics: dict[str, float]


class Task(ABC):
    name: str
    # Tensors whose names start with one of these stay on the site under partial averaging
    # (FedPav): a site's own classifier, for instance. Everything else is shared.
    private_prefixes: tuple[str, ...] = ()

    def is_shared(self, tensor_name: str) -> bool:
        return not tensor_name.startswith(self.private_prefixes) if self.private_prefixes else True

    @abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised model, the same for the same seed."""

    @abstractmethod
    def load_site(self, settings: SiteDataSettings) -> Any:
        """This site's training data."""

    @abstractmethod
    def load_heldout(self, settings: SiteDataSettings) -> Any:
        """The held-out evaluation data."""

    @abstractmethod
    def num_examples(self, data: Any) -> int: ...

    @abstractmethod
    def train(
        self, model: torch.nn.Module, data: Any, params: TrainParams, device: torch.device
    ) -> TrainResult:
        """Trains in place; returns examples seen per epoch and metrics (loss, seconds)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        """Metrics of the model on ``data`` (accuracy, loss)."""


def pick_device() -> torch.device:
    """CUDA when present, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
