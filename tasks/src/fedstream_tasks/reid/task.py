"""The FedReID task: a site trains the shared backbone and bottleneck with its own private
identity classifier; evaluation follows the Market-1501 protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedstream_tasks.base import SiteDataSettings, Task, TrainParams
from fedstream_tasks.reid.data import Entry, read_split, training_entries
from fedstream_tasks.reid.metrics import evaluate_reid
from fedstream_tasks.reid.model import ReIDConfig, ReIDNet

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Batch size of the distillation pass.
DISTILL_BATCH = 32

PRESETS = {
    # CPU tests: 64x32 images, one narrow bottleneck block per stage.
    "tiny": ReIDConfig(blocks=(1, 1, 1, 1), base_width=8, embedding=512, height=64, width=32),
    # The paper's model: ResNet-50, last stride 1, 256x128 images.
    "full": ReIDConfig(),
}


@dataclass
class ReIDData:
    images: torch.Tensor  # (n, 3, H, W) uint8, resized
    labels: torch.Tensor  # (n,) int64: identities relabelled 0..k-1 (training) or person ids
    cams: torch.Tensor  # (n,)


@dataclass
class ReIDHeldout:
    query: ReIDData
    gallery: ReIDData


def read_images(paths: list[Path], height: int, width: int) -> torch.Tensor:
    from PIL import Image

    out = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - MEAN.to(images.device)) / STD.to(images.device)


class ReIDTask(Task):
    """Tasks ``fedreid`` (full) and ``fedreid-tiny``. Site data: a Market-1501-layout directory
    at ``FEDSTREAM_AGENT_DATA__PATH``. Use with the ``fedpav`` strategy (its classifier is
    private: each site's is sized by its own identity count)."""

    private_prefixes = ("classifier.",)
    metrics = ("rank1", "map", "rank5", "rank10")

    def __init__(self, preset: str = "tiny") -> None:
        self.name = "fedreid" if preset == "full" else f"fedreid-{preset}"
        self.config = PRESETS[preset]
        # The classifier's size: this site's identity count, known once its data is loaded.
        self.num_ids = 1
        self.pad = max(1, round(10 * self.config.height / 256))

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return ReIDNet(self.config, self.num_ids)

    def _root(self, settings: SiteDataSettings) -> Path:
        if settings.path is None:
            raise ValueError(
                f"task {self.name} needs the site's data set: set FEDSTREAM_AGENT_DATA__PATH to a "
                "Market-1501-layout directory (bounding_box_train/, query/, bounding_box_test/)"
            )
        return settings.path

    def _data(self, entries: list[Entry]) -> ReIDData:
        return ReIDData(
            read_images([e.path for e in entries], self.config.height, self.config.width),
            torch.tensor([e.pid for e in entries], dtype=torch.long),
            torch.tensor([e.cam for e in entries], dtype=torch.long),
        )

    def load_site(self, settings: SiteDataSettings) -> ReIDData:
        entries, self.num_ids = training_entries(self._root(settings))
        if not entries:
            raise ValueError(f"{self._root(settings)}/bounding_box_train holds no labelled images")
        return self._data(entries)

    def load_heldout(self, settings: SiteDataSettings) -> ReIDHeldout:
        root = self._root(settings)
        return ReIDHeldout(self._data(read_split(root, "query")), self._data(read_split(root, "bounding_box_test")))

    def num_examples(self, data: ReIDData | ReIDHeldout) -> int:
        """Training images, or the queries of held-out data."""
        return len(data.query.labels if isinstance(data, ReIDHeldout) else data.labels)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The paper's training transform on resized images: pad, random crop back to size,
        random horizontal flip."""
        n, _, h, w = images.shape
        p = self.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.empty_like(images)
        for i in range(n):
            crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
            out[i] = crop.flip(2) if flip[i] else crop
        return out

    def batches(self, data: ReIDData, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        order = torch.randperm(len(data.labels), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) >= 2:  # BatchNorm needs more than one example
                yield self.augment(data.images[idx], generator), data.labels[idx]

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        images, labels = batch
        return F.cross_entropy(model(normalise(images.to(device))), labels.to(device)), len(labels)

    def outputs(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        logits: torch.Tensor = model(normalise(batch[0].to(device)))
        return logits

    def optimizer(self, model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
        """FedReID's: SGD with Nesterov momentum 0.9 and weight decay 5e-4; the backbone at a
        tenth of the learning rate of the bottleneck and classifier."""
        assert isinstance(model, ReIDNet)
        head = list(model.bottleneck.parameters()) + list(model.classifier.parameters())
        return torch.optim.SGD(
            [{"params": model.backbone.parameters(), "lr": params.learning_rate * 0.1},
             {"params": head, "lr": params.learning_rate}],
            lr=params.learning_rate, momentum=0.9, nesterov=True, weight_decay=5e-4,
        )

    @torch.no_grad()
    def embed(self, model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
        """The Market-1501 protocol's embedding: of the image plus its horizontal flip, summed
        and L2-normalised."""
        assert isinstance(model, ReIDNet)
        model.to(device).eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = normalise(images[i : i + batch_size].to(device))
            f = model.embed(x) + model.embed(x.flip(3))
            out.append(F.normalize(f.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.zeros((0, self.config.embedding))

    def evaluate(self, model: nn.Module, data: ReIDHeldout, device: torch.device) -> dict[str, float]:
        """Rank-1/5/10 and mAP of the site's queries against its gallery."""
        q = self.embed(model, data.query.images, device).numpy()
        g = self.embed(model, data.gallery.images, device).numpy()
        scores = evaluate_reid(q, data.query.labels.numpy(), data.query.cams.numpy(),
                               g, data.gallery.labels.numpy(), data.gallery.cams.numpy())
        return {**scores.as_metrics(), "examples": float(scores.queries)}

    # Server-side knowledge distillation.

    def load_public(self, path: Path) -> torch.Tensor:
        """Every image of the directory (unlabeled), resized: (n, 3, H, W) uint8."""
        if not path.is_dir():
            raise ValueError(f"public set {path} is not a directory")
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(paths) < 2:
            raise ValueError(f"public set {path} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); at least 2 needed")
        return read_images(paths, self.config.height, self.config.width)

    def shared_model(self, state: dict[str, torch.Tensor]) -> ReIDNet:
        """A model holding these shared tensors (its classifier unused); raises ValueError when
        they are not exactly this task's shared tensors."""
        model = ReIDNet(self.config, 1)
        expected = {k for k in model.state_dict() if self.is_shared(k)}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"not the shared tensors of {self.name}: missing {missing[:3]}, unexpected {extra[:3]}")
        model.load_state_dict(state, strict=False)
        return model

    def distill(
        self,
        student: dict[str, torch.Tensor],
        teachers: Iterable[dict[str, torch.Tensor]],
        public: torch.Tensor,
        lr: float,
        device: torch.device,
        *,
        student_mode: str = "eval",
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """FedReID's server-side distillation: the student's 512-d embedding of each public
        image regresses by MSE onto the mean of the teachers' embeddings of it (one pass, SGD
        with Nesterov momentum 0.9 and weight decay 5e-4, batches of 32). Teachers run in
        evaluation mode without gradients: their dropout off and their BatchNorm statistics
        their own. The student too learns in evaluation mode (the paper's ran in training
        mode): its BatchNorm statistics stay the federation's average instead of drifting
        toward the public set's, and without dropout it regresses the very embedding that
        retrieval uses. ``student_mode="train"`` runs it as the paper did, for comparison
        (bench/fedreid_distill.py; docs/fedreid.md)."""
        if student_mode not in ("eval", "train"):
            raise ValueError(f"student_mode must be eval or train, not {student_mode!r}")
        targets = torch.zeros((len(public), self.config.embedding))
        count = 0
        with torch.no_grad():
            for state in teachers:
                teacher = self.shared_model(state).to(device).eval()
                for i in range(0, len(public), 64):
                    targets[i : i + 64] += teacher.embed(normalise(public[i : i + 64].to(device))).float().cpu()
                count += 1
        if count == 0:
            raise ValueError("distillation needs at least one teacher")
        targets /= count
        model = self.shared_model(student).to(device)
        before = self._embedding_mse(model, public, targets, device)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        order = torch.randperm(len(public), generator=torch.Generator().manual_seed(0))
        model.train(student_mode == "train")
        total, seen = 0.0, 0
        for i in range(0, len(order), DISTILL_BATCH):
            idx = order[i : i + DISTILL_BATCH]
            if len(idx) < 2:  # BatchNorm needs more than one example
                continue
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model.embed(normalise(public[idx].to(device))), targets[idx].to(device))
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(idx)
            seen += len(idx)
        after = self._embedding_mse(model, public, targets, device)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if self.is_shared(k)}
        return state, {
            "distill_mse_before": before,
            "distill_mse_after": after,
            "distill_train_loss": total / max(seen, 1),
            "distill_images": float(seen),
            "distill_teachers": float(count),
        }

    @torch.no_grad()
    def _embedding_mse(self, model: ReIDNet, public: torch.Tensor, targets: torch.Tensor, device: torch.device) -> float:
        """Mean squared error of the model's evaluation-mode embeddings against the targets."""
        model.eval()
        total = 0.0
        for i in range(0, len(public), 64):
            out = model.embed(normalise(public[i : i + 64].to(device))).float().cpu()
            total += float(((out - targets[i : i + 64]) ** 2).sum())
        return total / targets.numel()
