"""The updates that the samplers of a variance-preserving process share, written on alpha_bar = alpha^2 = 1 - sigma^2
at the visited times: the predicted x_0, one DDIM step, and the marginals a sampler reports. The families'
own samplers and the family-agnostic ones build on them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..tensors import ImageGenerators


def batch_time(t: int | float, x: Tensor) -> Tensor:
    """The step of a batch: int64 for discrete steps, x's dtype for continuous times."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long if isinstance(t, int) else x.dtype)


def noise_like(x: Tensor, generator: torch.Generator | ImageGenerators | None) -> Tensor:
    """Standard normal noise of x's shape: each image's own when ``generator`` holds one per image."""
    if isinstance(generator, ImageGenerators):
        return generator.randn(x.shape, x.dtype).to(x.device)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def predict_x0(x_t: Tensor, eps: Tensor, a_t: float, clip_denoised: bool) -> Tensor:
    """x_0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped to [-1, 1] when ``clip_denoised``."""
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return x0.clamp(-1, 1) if clip_denoised else x0


def ddim_step(
    x_t: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float, clip_denoised: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One DDIM update (Song et al. 2021, eq. 12) of a variance-preserving process, from t to s < t.

    a = alpha_bar = alpha^2 = 1 - sigma^2 at each time. x_0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    (clipped to [-1, 1] with eps recomputed from it when ``clip_denoised``), and
    x_s = sqrt(a_s) x_0_hat + sqrt(1 - a_s - v) eps + sqrt(v) z, v = eta^2 (1 - a_s)/(1 - a_t) (1 - a_t/a_s).
    eta = 0 is deterministic; eta = 1 is the posterior q(x_s | x_t, x_0 = x_0_hat). Returns (x_s, x_0_hat).
    """
    x0 = predict_x0(x_t, eps, a_t, clip_denoised)
    if clip_denoised:
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    variance = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    x_s = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - variance, 0.0)) * eps
    if variance > 0:
        x_s = x_s + math.sqrt(variance) * noise_like(x_t, generator)
    return x_s, x0


class VariancePreservingSampler:
    """A sampler of a variance-preserving process, which knows alpha_bar = alpha^2 = 1 - sigma^2 at each time."""

    alpha_bars: list[float]
    timesteps: list

    @property
    def marginals(self) -> list[tuple[float, float]]:
        return [(math.sqrt(a), math.sqrt(1 - a)) for a in self.alpha_bars]

    @property
    def steps(self) -> int:
        return len(self.timesteps)
