"""What every sampler shares: the protocol and the loop that records a trajectory.

A sampler owns its loop (k-diffusion's ``sample_*(model, x, sigmas, callback)``): called with a denoiser and the
state at the first time of its grid, it runs its steps to the data and returns it. It keeps nothing between calls,
so a trajectory may start at any step. It sees a denoiser, its grid of times with their marginals and the
process's conversions, never a family's internals (:mod:`diffusionlab.core.updates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..core.process import Denoiser, TimeGrid
from ..core.updates import Callback, Marginal


class Sampler(Protocol):
    process: Any
    """The noise process it draws from (:class:`diffusionlab.core.process.Process`), for its conversions."""
    grid: TimeGrid
    """The times of its steps from the noisiest, with their marginals; the data comes after the last."""

    @property
    def timesteps(self) -> list: ...

    @property
    def marginals(self) -> list[Marginal]: ...

    @property
    def steps(self) -> int:
        """Its number of steps."""
        ...

    @property
    def evaluations(self) -> int:
        """Network evaluations of one trajectory, unguided (Heun's: 2 steps - 1)."""
        ...

    def __call__(self, model: Denoiser, x: Tensor, generator: Any = None, start: int = 0,
                 callback: Callback | None = None) -> Tensor:
        """The data reached from the state ``x`` at the time of step ``start``."""
        ...


@dataclass
class Trajectory:
    """Frames recorded during sampling: the step's time, x_t after it and the x_0 predicted at it, each
    [B, C, H, W]."""

    steps: list
    x_t: list[Tensor]
    pred_x0: list[Tensor]


def prior_draw(process: Any, noise: Tensor) -> Tensor:
    """A draw of the process's prior N(0, prior_sigma^2 I) from standard normal ``noise``: where every sampling
    path starts (sigma_max for a variance-exploding process, 1 for the others)."""
    return noise if process.prior_sigma == 1 else process.prior_sigma * noise


@torch.inference_mode()
def sample(
    model: Denoiser,
    sampler: Sampler,
    x: Tensor,
    generator: Any = None,
    record: set[int] | None = None,
    start: int = 0,
) -> tuple[Tensor, Trajectory]:
    """Run ``sampler`` from ``x`` [B, C, H, W], a draw of the marginal at the time of its step ``start`` (the
    prior, :func:`prior_draw`, when 0); frames are recorded after the steps indexed in ``record``."""
    trajectory = Trajectory([], [], [])

    def keep(i: int, t: Any, x_t: Tensor, x0: Tensor) -> None:
        if i in record:
            trajectory.steps.append(t)
            trajectory.x_t.append(x_t.cpu())
            trajectory.pred_x0.append(x0.cpu())

    out = sampler(model, x, generator, start=start, callback=keep if record else None)
    return out, trajectory
