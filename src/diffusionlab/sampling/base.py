"""What every sampler shares: the protocol and the sampling loop.

A sampler is told how many steps to take (``set_timesteps``), exposes the times it evaluates the network
at in order (``timesteps``) with their marginals, and maps one model output to the next sample with
``step``. The loop in :func:`sample` is the same for every sampler; a sampler sees a denoiser, a grid of
times and the process's conversions, never a family's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..core.process import Denoiser
from ..core.updates import batch_time


class Sampler(Protocol):
    process: Any
    """The noise process it draws from (:class:`diffusionlab.core.process.Process`), for its conversions."""
    timesteps: list
    """The times the network is evaluated at, in order (the loop of :func:`sample` visits each once)."""
    marginals: list[tuple[float, float]]
    """(alpha, sigma) of x_t = alpha x_0 + sigma eps at each visited time; the data, after the last one, has (1, 0)."""

    @property
    def steps(self) -> int:
        """Its number of steps (Heun's takes two evaluations for each but the last)."""
        ...

    def set_timesteps(self, num_steps: int) -> None: ...

    def step(self, model_output: Tensor, t: Any, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(the sample at the next time, predicted x_0) from the model's output at time t."""
        ...


@dataclass
class Trajectory:
    """Frames recorded during sampling: step index, x_t and predicted x_0, each [B, C, H, W]."""

    steps: list[int]
    x_t: list[Tensor]
    pred_x0: list[Tensor]


@torch.inference_mode()
def sample(
    model: Denoiser,
    sampler: Sampler,
    noise: Tensor,
    generator: torch.Generator | None = None,
    record: set[int] | None = None,
    start: int = 0,
) -> tuple[Tensor, Trajectory]:
    """Run the reverse process from ``noise`` [B, C, H, W], a draw at the sampler's visited time
    ``timesteps[start]`` (pure noise when ``start`` is 0); records frames at the step indices in ``record``."""
    x = noise
    trajectory = Trajectory([], [], [])
    if hasattr(sampler, "reset"):
        sampler.reset()
    for i, t in enumerate(sampler.timesteps[start:], start):
        x, x0 = sampler.step(model(x, batch_time(t, x)), t, x, generator)
        if record and i in record:
            trajectory.steps.append(t)
            trajectory.x_t.append(x.cpu())
            trajectory.pred_x0.append(x0.cpu())
    return x, trajectory
