"""Batched generation of samples with a chosen sampler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..device import make_generator
from ..tensors import to_uint8
from .base import Sampler, Trajectory, sample
from .guidance import ConditionalModel


@dataclass
class Generated:
    images: np.ndarray
    """uint8 [N, C, H, W]."""
    trajectory: Trajectory
    """Frames of the first batch, at evenly spaced steps."""


def frame_indices(num_steps: int, num_frames: int) -> set[int]:
    """Evenly spaced loop indices over ``num_steps`` steps, always ending at the last one."""
    return {int(i) for i in np.round(np.linspace(0, num_steps - 1, num_frames))}


def generate(
    model: ConditionalModel,
    sampler: Sampler,
    num_samples: int,
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    seed: int,
    num_frames: int = 10,
    labels: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Generated:
    """Draw ``num_samples`` images of ``shape`` (C, H, W), deterministic given ``seed``; of the classes
    ``labels`` [num_samples] (guided with the model's scale) when given. ``progress`` hears of each batch's size."""
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    generator = make_generator(device, seed)
    record = frame_indices(len(sampler.timesteps), num_frames)
    chunks: list[Tensor] = []
    trajectory = None
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        noise = torch.randn((n, *shape), device=device, generator=generator)
        y = None if labels is None else torch.as_tensor(labels[start:start + n], device=device)
        x, traj = sample(model.denoiser(y), sampler, noise, generator, record if trajectory is None else None)
        trajectory = trajectory or traj
        chunks.append(to_uint8(x).cpu())
        if progress:
            progress(n)
    return Generated(torch.cat(chunks).numpy(), trajectory)
