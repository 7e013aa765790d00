"""Correlated Gaussian data N(mu, Sigma) on small images and the exact denoiser of any process for it.

For x_t = alpha x_0 + sigma eps, K = alpha^2 Sigma + sigma^2 I is the covariance of x_t and
E[x_0 | x_t] = mu + alpha Sigma K^-1 (x_t - alpha mu), E[eps | x_t] = sigma K^-1 (x_t - alpha mu).
"""

from __future__ import annotations

import math

import torch

SHAPE = (1, 2, 4)
DIMS = math.prod(SHAPE)


def gaussian(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu [D], Sigma [D, D]) float64, correlated, with variances near 0.1."""
    g = torch.Generator().manual_seed(seed)
    mu = 0.3 * torch.randn(DIMS, generator=g, dtype=torch.float64)
    a = torch.randn(DIMS, DIMS, generator=g, dtype=torch.float64) / math.sqrt(DIMS)
    return mu, 0.06 * a @ a.T + 0.05 * torch.eye(DIMS, dtype=torch.float64)


def draw(n: int, mu: torch.Tensor, cov: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, DIMS, generator=g, dtype=torch.float64)
    return (mu + z @ torch.linalg.cholesky(cov).T).reshape(n, *SHAPE)


def exact_predictions(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor,
                      cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x_0 | x_t], E[eps | x_t]) [B, *SHAPE] at per-row alpha, sigma [B]."""
    flat = x.reshape(x.shape[0], -1).double()
    eye = torch.eye(DIMS, dtype=torch.float64)
    a, s = alpha.double().reshape(-1, 1, 1), sigma.double().reshape(-1, 1, 1)
    k = a**2 * cov + s**2 * eye
    centred = (flat - a[:, 0] * mu).unsqueeze(-1)
    solved = torch.linalg.solve(k, centred)
    x0 = mu + (a * cov @ solved).squeeze(-1)
    eps = (s * solved).squeeze(-1)
    return x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype)


def exact_model(process, mu: torch.Tensor, cov: torch.Tensor):
    """The process's denoiser output for the exact predictions, at (x_t, t) in the process's time:
    its ODE slope, which is eps for the variance-preserving processes and the velocity for the flow."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = process.marginal(t)
        x0, eps = exact_predictions(x, alpha, sigma, mu, cov)
        return process.ode_derivative(x0, eps)

    return model


def log_density(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) [B] of x [B, *SHAPE]."""
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x.reshape(x.shape[0], -1).double())


def affine_map(sampler, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(M [D, D], b [D]) of a deterministic sampler whose model is affine in x: its output is M x_T + b."""
    from diffusionlab.sampling.base import sample

    points = torch.cat([torch.zeros(1, DIMS), torch.eye(DIMS)]).double().reshape(DIMS + 1, *SHAPE)
    out = sample(model, sampler, points)[0].reshape(DIMS + 1, DIMS)
    return (out[1:] - out[0]).T, out[0]
