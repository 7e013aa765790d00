"""What every sampler is built from: the denoised prediction, the one DDIM update, and the loop of a sampler
whose step needs only the current output.

Every update is written on the marginals (alpha, sigma) of x_t = alpha x_0 + sigma eps, so that one formula
serves a variance-preserving process (alpha^2 + sigma^2 = 1), a variance-exploding one (alpha = 1) and the
straight path of the flow alike.

A sampler owns its loop (as k-diffusion's ``sample_*`` functions do): it is called with a denoiser and the
state at the first time of its grid, runs every step to the data and returns it, and keeps nothing between
calls. A sampler whose step needs only the current output (:class:`OneStepSampler`) also exposes that step
(:meth:`OneStepSampler.update`), which inpainting runs back and forth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..tensors import ImageGenerators
from .process import Denoiser, TimeGrid

Marginal = tuple[float, float]
"""(alpha, sigma) of x_t = alpha x_0 + sigma eps at one time; the data is (1, 0)."""
DATA: Marginal = (1.0, 0.0)

Callback = Callable[[int, Any, Tensor, Tensor], None]
"""Told after each step of a sampler: the step's index in the grid, its time, the new state and the x_0 predicted
at the step's start."""


def batch_time(t: int | float, x: Tensor) -> Tensor:
    """The step of a batch: int64 for discrete steps, x's dtype for continuous times."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long if isinstance(t, int) else x.dtype)


def noise_like(x: Tensor, generator: torch.Generator | ImageGenerators | None) -> Tensor:
    """Standard normal noise of x's shape: each image's own when ``generator`` holds one per image."""
    if isinstance(generator, ImageGenerators):
        return generator.randn(x.shape, x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def eps_from(x_t: Tensor, x0: Tensor, alpha: float, sigma: float) -> Tensor:
    """The eps for which x_t = alpha x_0 + sigma eps."""
    return (x_t - alpha * x0) / sigma


def denoised(process: Any, output: Tensor, x_t: Tensor, alpha: float, sigma: float,
             clip_denoised: bool) -> tuple[Tensor, Tensor]:
    """(x_0_hat, eps_hat) from the network's ``output`` at x_t with marginal (alpha, sigma); with ``clip_denoised``
    x_0_hat is clipped to [-1, 1] and eps_hat recomputed from it, so that the two still give x_t."""
    x0, eps = process.x0_eps(output, x_t, alpha, sigma)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
        eps = eps_from(x_t, x0, alpha, sigma)
    return x0, eps


def ddim_update(x0: Tensor, eps: Tensor, at_t: Marginal, at_s: Marginal, eta: float,
                generator: torch.Generator | ImageGenerators | None) -> Tensor:
    """One DDIM update (Song et al. 2021, eq. 12, for any marginals) from t to s, the less noisy time when sampling
    (an inversion runs it, deterministic, towards the noise):
    x_s = alpha_s x_0 + sqrt(sigma_s^2 - v) eps + sqrt(v) z with v = eta^2 sigma_s^2 (1 - (alpha_t sigma_s /
    (alpha_s sigma_t))^2). eta = 0 is deterministic (an Euler step of the probability-flow ODE); eta = 1 is the
    posterior q(x_s | x_t, x_0 = x_0_hat) of a variance-preserving process. At the data (sigma_s = 0) it is x_0;
    noise is drawn only when v > 0."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = at_t, at_s
    if sigma_s == 0:
        return x0
    v = max(eta**2 * sigma_s**2 * (1 - (alpha_t * sigma_s / (alpha_s * sigma_t)) ** 2), 0.0) if eta else 0.0
    x_s = alpha_s * x0 + (sigma_s if v == 0 else math.sqrt(max(sigma_s**2 - v, 0.0))) * eps
    if v > 0:
        x_s = x_s + math.sqrt(v) * noise_like(x0, generator)
    return x_s


def vp_grid(times: list, alpha_bars: list[float]) -> TimeGrid:
    """The grid of a variance-preserving process at ``times`` with alpha_bar = alpha^2 = 1 - sigma^2 there."""
    return TimeGrid(list(times), [math.sqrt(a) for a in alpha_bars], [math.sqrt(1 - a) for a in alpha_bars])


class GridSampler:
    """What every sampler holds: its process and the grid of its steps' times, from the noisiest, with the
    marginals there. Calling it (:meth:`__call__`) runs its loop."""

    def __init__(self, process: Any, grid: TimeGrid):
        if len(grid) < 1:
            raise ValueError("a sampler needs at least one step")
        self.process, self.grid = process, grid

    @property
    def timesteps(self) -> list:
        """The times of its steps, in order."""
        return list(self.grid.times)

    @property
    def marginals(self) -> list[Marginal]:
        """(alpha, sigma) at each step's time; after the last comes the data, (1, 0)."""
        return list(zip(self.grid.alphas, self.grid.sigmas))

    @property
    def steps(self) -> int:
        return len(self.grid)

    @property
    def evaluations(self) -> int:
        """Network evaluations of one trajectory (unguided)."""
        return len(self.grid)

    def marginal_after(self, i: int) -> Marginal:
        """The marginal step i ends at: the next time's, or the data's after the last step."""
        return (self.grid.alphas[i + 1], self.grid.sigmas[i + 1]) if i + 1 < len(self.grid) else DATA

    def check_start(self, start: int) -> None:
        if not 0 <= start < len(self.grid):
            raise ValueError(f"start must index the sampler's {len(self.grid)} steps, got {start}")

    def __call__(self, model: Denoiser, x: Tensor, generator: torch.Generator | ImageGenerators | None = None,
                 start: int = 0, callback: Callback | None = None) -> Tensor:
        """The data reached from ``x``, a draw of the marginal at the time of step ``start`` (pure noise from
        the process's prior when 0), through every later step; ``callback`` hears of each step."""
        raise NotImplementedError


class OneStepSampler(GridSampler):
    """A sampler whose step i maps the network's output at x_{t_i} to x_{t_{i+1}} and nothing else: its loop
    evaluates the network once per step."""

    def update(self, output: Tensor, i: int, x: Tensor,
               generator: torch.Generator | ImageGenerators | None) -> tuple[Tensor, Tensor]:
        """(x at the time after step i, x_0 predicted) from the network's ``output`` at x, at step i's time."""
        raise NotImplementedError

    def __call__(self, model: Denoiser, x: Tensor, generator: torch.Generator | ImageGenerators | None = None,
                 start: int = 0, callback: Callback | None = None) -> Tensor:
        self.check_start(start)
        for i in range(start, len(self.grid)):
            t = self.grid.times[i]
            x, x0 = self.update(model(x, batch_time(t, x)), i, x, generator)
            if callback is not None:
                callback(i, t, x, x0)
        return x
