"""Bits/dim through the probability-flow ODE of any family.

The likelihood integrates the ODE from the data to the noise with the instantaneous change of variables
(Chen et al. 2018; Song et al. 2021, app. D.2), the divergence estimated by Hutchinson's trace estimator
(Grathwohl et al. 2018), on uniformly dequantised 8-bit data. It integrates on the straight path of the
flow family for every family (y = x / (alpha + sigma), tau = sigma / (alpha + sigma)), whose time is
bounded, so that a few dozen Heun steps suffice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .likelihood import LN2
from .process import Denoiser, Process


def _divergence(f: Tensor, y: Tensor, probes: list[Tensor]) -> Tensor:
    """Hutchinson's estimate [B] of div_y f = tr(df/dy): the mean over ``probes`` z of z^T (df/dy) z."""
    total = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
    for k, z in enumerate(probes):
        (vjp,) = torch.autograd.grad(f, y, z, retain_graph=k < len(probes) - 1)
        total += (vjp * z).flatten(1).sum(1).double()
    return total / len(probes)


def ode_log_likelihood(process: Process, model: Denoiser, x: Tensor, steps: int, probes: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """log p(x) [B] in nats under the probability-flow ODE of ``process`` with the denoiser ``model``, for
    x [B, C, H, W] placed at the process's cleanest time.

    Whatever the family, the ODE is integrated on the straight path that every Gaussian process maps onto:
    y = x / (alpha + sigma) = (1 - tau) x_0 + tau eps with tau = sigma / (alpha + sigma), dy/dtau =
    eps_hat - x_0_hat, where tau stays in [0, 1] (EDM's sigma / alpha would reach e^(gamma_max / 2) and more).
    Heun steps over :meth:`Process.likelihood_grid` from the cleanest time to the noisiest, the divergence
    estimated with ``probes`` Rademacher vectors (the same ones along the path):
    log p(x) = log N(x_T; 0, prior_sigma^2 I) + D log(c_T / c_0) + integral of div_y f dtau, c = alpha + sigma.
    """
    grid = process.likelihood_grid(steps)
    times, alphas, sigmas = grid.times[::-1], grid.alphas[::-1], grid.sigmas[::-1]
    scales = [a + s for a, s in zip(alphas, sigmas)]
    taus = [s / c for s, c in zip(sigmas, scales)]
    dims = x[0].numel()
    z = [torch.randint(0, 2, x.shape, device=x.device, generator=generator).to(x.dtype) * 2 - 1 for _ in range(probes)]

    def slope_and_divergence(y: Tensor, i: int) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            x_t = scales[i] * y
            t = torch.full((x.shape[0],), times[i], device=x.device,
                           dtype=torch.long if isinstance(times[i], int) else x.dtype)
            x0, eps = process.x0_eps(model(x_t, t), x_t, alphas[i], sigmas[i])
            f = eps - x0
            div = _divergence(f, y, z)
        return f.detach(), div

    y = x / scales[0]
    f, div = slope_and_divergence(y, 0)
    integral = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(len(times) - 1):
        h = taus[i + 1] - taus[i]
        f_end, div_end = slope_and_divergence(y + h * f, i + 1)
        y = y + h * 0.5 * (f + f_end)
        integral += h * 0.5 * (div + div_end)
        f, div = slope_and_divergence(y, i + 1) if i + 1 < len(times) - 1 else (f_end, div_end)
    x_T = (scales[-1] * y).double()
    s = process.prior_sigma
    prior = -0.5 * (x_T.flatten(1) ** 2).sum(1) / s**2 - dims * (math.log(s) + 0.5 * math.log(2 * math.pi))
    return prior + dims * math.log(scales[-1] / scales[0]) + integral


def ode_bits_per_dim(process: Process, model: Denoiser, images: Tensor, steps: int, probes: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
    """bits/dim [B] of 8-bit ``images`` (uint8 [B, C, H, W]) through the ODE, on uniformly dequantised data in the
    discretisation the models are trained on and the bound uses: level k is the bin of width 2/255 centred on
    k / 127.5 - 1, x = (k + u - 1/2) / 127.5 - 1 with u ~ U(0, 1) per pixel, and -log2 P(k) <= -log2 p(x) +
    D log2 127.5."""
    u = torch.rand(images.shape, device=images.device, generator=generator)
    x = (images.double() + u.double() - 0.5) / 127.5 - 1.0
    nll = -ode_log_likelihood(process, model, x.float(), steps, probes, generator)
    return nll / (images[0].numel() * LN2) + math.log2(127.5)
