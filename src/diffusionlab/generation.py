"""Batched generation of samples with a chosen sampler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .device import make_generator
from .diffusion import Denoiser
from .samplers import Sampler, Trajectory, sample
from .tensors import to_uint8


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
    model: Denoiser,
    sampler: Sampler,
    num_samples: int,
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    seed: int,
    num_frames: int = 10,
) -> Generated:
    """Draw ``num_samples`` images of ``shape`` (C, H, W), deterministic given ``seed``."""
    generator = make_generator(device, seed)
    record = frame_indices(len(sampler.timesteps), num_frames)
    chunks: list[Tensor] = []
    trajectory = None
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        noise = torch.randn((n, *shape), device=device, generator=generator)
        x, traj = sample(model, sampler, noise, generator, record if trajectory is None else None)
        trajectory = trajectory or traj
        chunks.append(to_uint8(x).cpu())
    return Generated(torch.cat(chunks).numpy(), trajectory)
