"""What privacy does to an update before it leaves the site: its change from the base is what
travels (normalisation statistics included), clipped to the clip norm, and under local
differential privacy noised; the aggregator adds the base back."""

from __future__ import annotations

import logging

import numpy as np
import torch

from fedstream.dp import clip_tensors, gaussian_noise, noise_generator
from fedstream.privacy import DPMode
from fedstream.rounds import TrainingConfig

log = logging.getLogger(__name__)


def is_private(training: TrainingConfig) -> bool:
    """Whether the round's update travels as a change that every update shares one base for:
    differential privacy (either mode) or secure aggregation."""
    return training.privacy is not None or training.secure_aggregation is not None


def private_changes(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each floating tensor as its change from ``base`` (computed in float32 or wider, stored in
    its own dtype), normalisation statistics included: a private round's updates all share its
    base. Other tensors travel as they are (the aggregator keeps the base's)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if value.is_floating_point():
            wide = torch.promote_types(value.dtype, torch.float32)
            out[name] = (value.to(wide) - base[name].to(wide)).to(value.dtype)
        else:
            out[name] = value
    return out


def add_gaussian_noise(changes: dict[str, torch.Tensor], std: float) -> None:
    """Adds N(0, std^2) to every coordinate of every floating tensor, in place, drawn from a
    generator seeded from the operating system (fedstream.dp)."""
    generator = noise_generator()
    for value in changes.values():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        dtype = np.float64 if value.dtype == torch.float64 else np.float32
        noise = torch.from_numpy(gaussian_noise(generator, value.numel(), std, dtype)).reshape(value.shape)
        value.add_(noise.to(value.dtype))


def privatize(
    training: TrainingConfig, state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """What leaves the site of a private round (``is_private``): the trained ``state``'s change
    from ``base`` (``private_changes``), clipped to the clip norm (L2 over every floating
    tensor that travels) under local differential privacy, or under central mode with secure
    aggregation (the aggregator cannot clip what it cannot see), and noised under local mode."""
    return clip_and_noise(training, private_changes(state, base))


def clip_and_noise(training: TrainingConfig, changes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``changes`` clipped and noised in place as ``privatize`` says (returned)."""
    spec = training.privacy
    if spec is None:
        return changes
    local = spec.mode is DPMode.LOCAL
    if not local and training.secure_aggregation is None:
        return changes  # the aggregator clips and noises
    norm, _ = clip_tensors(changes, spec.clip_norm)
    if local:
        add_gaussian_noise(changes, spec.noise_multiplier * spec.clip_norm)
        log.info("update clipped to %g (norm %.4g) and noised (%g)", spec.clip_norm, norm, spec.noise_multiplier)
    else:
        log.info("update clipped to %g (norm %.4g) before secure aggregation", spec.clip_norm, norm)
    return changes


def reported(training: TrainingConfig, num_examples: int, metrics: dict[str, float]) -> tuple[int, dict[str, float]]:
    """What a training round's upload declares of itself: under differential privacy neither the
    site's example count (0) nor its training metrics (none): they are computed from its data
    and are not privatized, and no strategy needs them (every update weighs the same)."""
    if training.privacy is None:
        return num_examples, metrics
    return 0, {}
