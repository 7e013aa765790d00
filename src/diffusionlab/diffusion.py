"""The Gaussian diffusion process of Ho et al. 2020, kept apart from the network.

The object holds the schedule's buffers, the forward process q(x_t | x_0), the posterior
q(x_{t-1} | x_t, x_0) and the training loss. The network is handed in on each call, so
model families and samplers can be added without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""A network mapping (x_t [B, C, H, W], t [B] int64) to its prediction [B, C, H, W]."""


def extract(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """values[t] reshaped to [B, 1, ..., 1] so it broadcasts against a [B, ...] tensor of ``ndim`` dims."""
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with betas [T] (float64), epsilon-prediction.

    Index t = 0..T-1 here is step t + 1 of the paper (beta_1..beta_T).
    """

    def __init__(self, betas: np.ndarray, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        arrays = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            # posterior_variance[0] is 0; the log is clipped to the next value, as in Ho et al.'s code.
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        self.float64 = arrays
        for name, value in arrays.items():
            setattr(self, name, torch.as_tensor(value, dtype=dtype, device=device))

    def _at(self, values: Tensor, t: Tensor, x: Tensor) -> Tensor:
        return extract(values, t, x.ndim).to(x.dtype)

    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t of q(x_t | x_0) (Ho et al. eq. 4)."""
        mean = self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self._at(1.0 - self.alphas_cumprod, t, x_start).expand_as(x_start)
        return mean, variance

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a draw from q(x_t | x_0)."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x_start + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        variance = self._at(self.posterior_variance, t, x_t)
        log_variance = self._at(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def predict_start_from_noise(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_noise_from_start(self, x_t: Tensor, t: Tensor, x_start: Tensor) -> Tensor:
        """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1), the inverse of the above."""
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / self._at(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def training_losses(self, model: Denoiser, x_start: Tensor, t: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """L_simple of Ho et al. eq. 14: ||eps - eps_theta(x_t, t)||^2, averaged over pixels.

        Returns per-example terms [B]: ``loss`` (what is minimised) and ``mse``.
        """
        x_t = self.q_sample(x_start, t, noise)
        eps = model(x_t, t)
        mse = (noise - eps).float().pow(2).mean(dim=tuple(range(1, x_start.ndim)))
        return {"loss": mse, "mse": mse}
