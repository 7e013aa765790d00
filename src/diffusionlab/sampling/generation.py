"""Batched generation of samples with a chosen sampler, one seed per image.

Image ``k`` of a run of draws of ``num_samples`` images is image ``k % num_samples`` of draw ``k // num_samples``;
its initial noise and every later random number of its trajectory come from a generator seeded by (seed, draw,
index) alone (:func:`diffusionlab.tensors.image_seed`). The images therefore depend on neither the batch size
nor the number of processes that share the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..tensors import ImageGenerators, image_seed, to_uint8
from .base import Sampler, Trajectory, prior_draw, sample
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


def image_generators(indices: np.ndarray, num_samples: int, seed: int, device: torch.device) -> ImageGenerators:
    """The generators of images ``indices`` of a run of draws of ``num_samples`` seeded ``seed``."""
    return ImageGenerators([image_seed(seed, int(k) // num_samples, int(k) % num_samples) for k in indices], device)


def draw_batch(model: ConditionalModel, sampler: Sampler, indices: np.ndarray, num_samples: int,
               shape: tuple[int, int, int], device: torch.device, seed: int, labels: np.ndarray | None = None,
               record: set[int] | None = None) -> tuple[torch.Tensor, Trajectory]:
    """Images ``indices`` (uint8 [len(indices), C, H, W] on the CPU) of a run of draws of ``num_samples`` images of
    ``shape``, of the classes ``labels[indices]`` when given; frames recorded at the loop indices ``record``."""
    generators = image_generators(indices, num_samples, seed, device)
    noise = prior_draw(sampler.process, generators.randn((len(indices), *shape)).to(device))
    y = None if labels is None else torch.as_tensor(labels[indices], device=device)
    x, trajectory = sample(model.denoiser(y), sampler, noise, generators, record)
    if model.decode is not None:
        x = model.decode(x)
        trajectory = Trajectory(trajectory.steps, [model.decode(f) for f in trajectory.x_t],
                                [model.decode(f) for f in trajectory.pred_x0])
    return to_uint8(x).cpu(), trajectory


def draw_images(model: ConditionalModel, sampler: Sampler, indices: np.ndarray, num_samples: int,
                shape: tuple[int, int, int], batch_size: int, device: torch.device, seed: int,
                labels: np.ndarray | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Images ``indices`` (see :func:`draw_batch`) in batches of ``batch_size``; ``progress`` hears of each batch's
    size."""
    chunks = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        chunks.append(draw_batch(model, sampler, batch, num_samples, shape, device, seed, labels)[0])
        if progress:
            progress(len(batch))
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, *shape), dtype=np.uint8)


def trajectory_of(model: ConditionalModel, sampler: Sampler, count: int, num_samples: int,
                  shape: tuple[int, int, int], device: torch.device, seed: int, num_frames: int,
                  labels: np.ndarray | None = None) -> Trajectory:
    """``num_frames`` evenly spaced frames of the first ``count`` images of the run: the same images as any batch
    that holds them draws."""
    record = frame_indices(len(sampler.timesteps), num_frames)
    return draw_batch(model, sampler, np.arange(count), num_samples, shape, device, seed, labels, record)[1]


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
    """Draw ``num_samples`` images of ``shape`` (C, H, W), one draw seeded ``seed``; of the classes ``labels``
    [num_samples] (guided with the model's scale) when given. ``progress`` hears of each batch's size."""
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    record = frame_indices(len(sampler.timesteps), num_frames)
    chunks, trajectory = [], None
    for start in range(0, num_samples, batch_size):
        indices = np.arange(start, min(start + batch_size, num_samples))
        x, traj = draw_batch(model, sampler, indices, num_samples, shape, device, seed, labels,
                             record if trajectory is None else None)
        trajectory = trajectory or traj
        chunks.append(x)
        if progress:
            progress(len(indices))
    return Generated(torch.cat(chunks).numpy(), trajectory)
