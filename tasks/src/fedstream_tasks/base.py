"""The task plug-in interface: what a workload gives agents, the demo and the evaluation.

A task is one class: its model factory, which tensors stay private to a site, how a site loads
its data, the loss of a batch, and its evaluation. The training loop is shared by every task
(``Task.train``): local epochs over shuffled batches, the device chosen for the agent (CUDA
with float16 mixed precision where present, the CPU otherwise), FedProx's proximal term, the
cosine distance FedReID weighs updates by, and the per-round report (training loss, examples
seen, seconds spent). docs/tasks.md shows a complete small task.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class SiteDataSettings(BaseModel):
    """Where a site's data comes from. Tasks with bundled data use the partition fields."""

    model_config = ConfigDict(extra="forbid")

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
    # On CUDA: float16 autocast with a gradient scaler.
    mixed_precision: bool = True
    # Called before each batch; what it raises stops training (the agent's round was cancelled).
    stop: Callable[[], None] | None = None


def proximal_term(model: torch.nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * the squared distance of the model's parameters from ``anchor`` (FedProx)."""
    total = torch.zeros((), device=anchor[0].device if anchor else None)
    for p, a in zip(model.parameters(), anchor, strict=True):
        total = total + (p - a).pow(2).sum()
    return 0.5 * mu * total


def cosine_distance(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean over a batch of 1 - cos(logits before local training, logits after): FedReID's
    measure of how far an agent moved the model."""
    cos = torch.nn.functional.cosine_similarity(
        before.float().flatten(1), after.float().flatten(1), dim=1
    )
    return float((1 - cos).mean().item())


@dataclass
class TrainResult:
    num_examples: int
    metrics: dict[str, float]


class Task(ABC):
    """A workload. Subclasses set ``name`` and implement the abstract methods; ``optimizer``
    and ``outputs`` have defaults."""

    name: str = ""
    # Tensors whose names start with one of these stay on the site under partial averaging
    # (FedPav): a site's own classifier, for instance. Everything else is shared.
    private_prefixes: tuple[str, ...] = ()
    # The metrics ``evaluate`` reports (besides "examples"), the first being the headline.
    metrics: tuple[str, ...] = ()

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
        """This site's held-out evaluation data."""

    @abstractmethod
    def num_examples(self, data: Any) -> int: ...

    @abstractmethod
    def batches(self, data: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        """One epoch of training batches in an order drawn from ``generator``."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        """The mean loss of a batch (moved to ``device``) and its number of examples."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        """``metrics`` of the model on ``data``, plus "examples"."""

    def outputs(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """The model's raw outputs (logits) on a batch, one row per example: what the cosine
        distance compares before and after local training. Default: ``model(batch[0])``."""
        logits: torch.Tensor = model(batch[0].to(device))
        return logits

    def optimizer(self, model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
        """Default: SGD with momentum 0.9 at the assignment's learning rate."""
        return torch.optim.SGD(model.parameters(), lr=params.learning_rate, momentum=0.9)

    def train(
        self, model: torch.nn.Module, data: Any, params: TrainParams, device: torch.device
    ) -> TrainResult:
        """Trains in place for ``params.local_epochs``; reports the mean training loss, the
        examples seen, the seconds spent, the cosine distance of the first batch's outputs
        before and after training and, on CUDA, the peak GPU memory allocated (bytes)."""
        start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.to(device)
        generator = torch.Generator().manual_seed(params.seed)
        opt = self.optimizer(model, params)
        amp = device.type == "cuda" and params.mixed_precision
        scaler = torch.amp.GradScaler("cuda") if amp else None
        anchor = [p.detach().clone() for p in model.parameters()] if params.proximal_mu > 0 else []
        probe = next(self.batches(data, params.batch_size, torch.Generator().manual_seed(params.seed)), None)
        before = self._probe(model, probe, device)
        model.train()
        total_loss, seen = 0.0, 0
        for _ in range(params.local_epochs):
            for batch in self.batches(data, params.batch_size, generator):
                if params.stop is not None:
                    params.stop()
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss, n = self.loss(model, batch, device)
                if anchor:
                    loss = loss + proximal_term(model, anchor, params.proximal_mu)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                total_loss += float(loss.item()) * n
                seen += n
        after = self._probe(model, probe, device)
        metrics = {
            "train_loss": total_loss / max(seen, 1),
            "examples_seen": float(seen),
            "train_seconds": time.perf_counter() - start,
        }
        if device.type == "cuda":
            metrics["gpu_peak_bytes"] = float(torch.cuda.max_memory_allocated(device))
        if before is not None and after is not None:
            metrics["cosine_distance"] = max(cosine_distance(before, after), 1e-12)
        return TrainResult(num_examples=self.num_examples(data), metrics=metrics)

    # Server-side knowledge distillation (FedPav's distill_every), run by the aggregator. A task
    # that supports it overrides both methods.

    @property
    def supports_distillation(self) -> bool:
        return type(self).distill is not Task.distill

    def load_public(self, path: Path) -> Any:
        """The unlabeled public set distillation runs on, from a directory."""
        raise ValueError(f"task {self.name} does not support server-side distillation")

    def distill(
        self,
        student: dict[str, torch.Tensor],
        teachers: Iterable[dict[str, torch.Tensor]],
        public: Any,
        lr: float,
        device: torch.device,
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The student's shared tensors after distillation from the teachers (participants'
        shared tensors) on the public set, and figures about it (logged, kept with the
        version)."""
        raise ValueError(f"task {self.name} does not support server-side distillation")

    def _probe(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor | None:
        if batch is None:
            return None
        model.eval()
        with torch.no_grad():
            return self.outputs(model, batch, device).float()


def pick_device() -> torch.device:
    """CUDA when present, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
