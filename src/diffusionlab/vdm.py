"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho 2021), kept apart from the network.

Continuous time t in [0, 1], z_t = alpha_t x + sigma_t eps with the log-SNR schedule gamma(t) of
:mod:`diffusionlab.gamma`. The negative ELBO of 8-bit data x (scaled to [-1, 1]) is

    prior          KL(q(z_1 | x) || N(0, I))
    reconstruction -log p(x | z_0), a Gaussian of mean z_0 / alpha_0 and scale sigma_0 / alpha_0
                   discretised into the 256 bins of the data
    diffusion      0.5 E_{t ~ U(0,1), eps} [gamma'(t) ||eps - eps_hat(z_t; t)||^2]   (eq. 17)

each reported in bits per dimension. The network sees the log-SNR: its time input is gamma(t)
mapped linearly from [gamma_min, gamma_max] onto [0, 1000].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .diffusion import Denoiser
from .distributed import Shard, global_rows
from .gamma import Gamma
from .likelihood import at_least_fp32, discretized_gaussian_log_likelihood, nats_to_bits_per_dim, normal_kl, sum_flat

NETWORK_TIME_SCALE = 1000.0


def _b(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = sqrt(sigmoid(-gamma)), sigma = sqrt(sigmoid(gamma)) (variance preserving)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


class VDM(nn.Module):
    """The VDM noise process; its only parameters are those of the schedule gamma(t)."""

    def __init__(self, gamma: Gamma):
        super().__init__()
        self.gamma = gamma

    def out_channels(self, channels: int) -> int:
        return channels

    def network_time(self, gamma: Tensor) -> Tensor:
        g = self.gamma
        return NETWORK_TIME_SCALE * (gamma - g.gamma_min) / (g.gamma_max - g.gamma_min)

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as a function of (z_t, t) for t in [0, 1]."""
        return lambda z, t: net(z, self.network_time(self.gamma(t)))

    @staticmethod
    def antithetic_times(batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """Low-discrepancy t: (u + i / B) mod 1 for one u ~ U(0, 1), so the batch covers [0, 1] evenly."""
        u = torch.rand((), device=device, generator=generator)
        return torch.remainder(u + torch.arange(batch_size, device=device) / batch_size, 1.0)

    def loss_terms(self, net: Denoiser, x: Tensor, t: Tensor, eps: Tensor, eps_0: Tensor,
                   variance_gradient: bool = False) -> dict[str, Tensor]:
        """Per-example terms [B] in bits/dim: ``prior``, ``reconstruction``, ``diffusion``, ``loss`` (their
        sum, the negative ELBO) and ``mse``.

        With ``variance_gradient`` the schedule's interior receives the gradient of E[diffusion^2]
        instead of E[loss] (sec. 5.3, app. I.2): the bound does not depend on the interior in
        continuous time, so this lowers the variance of its estimate. The endpoints and the
        network keep the gradient of the bound.
        """
        dims = x[0].numel()
        g_t, dg_t, s, ds = self.gamma.gamma_and_derivative(t)
        alpha_t, sigma_t = alpha_sigma(g_t)
        z_t = _b(alpha_t, x) * x + _b(sigma_t, x) * eps
        eps_hat = net(z_t, self.network_time(g_t))
        squared = sum_flat(at_least_fp32(eps - eps_hat) ** 2)
        diffusion = nats_to_bits_per_dim(0.5 * dg_t * squared, dims)

        alpha_1, sigma_1 = alpha_sigma(self.gamma.gamma_1)
        zero = torch.zeros_like(x)
        prior = nats_to_bits_per_dim(sum_flat(normal_kl(alpha_1 * x, 2 * sigma_1.log() + zero, zero, zero)), dims)

        g_0 = self.gamma.gamma_0
        alpha_0, sigma_0 = alpha_sigma(g_0)
        z_0 = alpha_0 * x + sigma_0 * eps_0
        log_scale = 0.5 * g_0 + zero  # log(sigma_0 / alpha_0)
        reconstruction = nats_to_bits_per_dim(-sum_flat(discretized_gaussian_log_likelihood(x, z_0 / alpha_0, log_scale)), dims)

        if variance_gradient and torch.is_grad_enabled() and self.gamma.interior_parameters():
            scale = 2 * diffusion.detach()
            s.register_hook(lambda grad: grad * scale)
            ds.register_hook(lambda grad: grad * scale)
        return {
            "loss": prior + reconstruction + diffusion,
            "prior": prior,
            "reconstruction": reconstruction,
            "diffusion": diffusion,
            "mse": squared / dims,
        }

    def losses_for_batch(self, net: Denoiser, x: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms for a batch: antithetic t, fresh noise, variance-minimising schedule gradient.
        With a ``shard``, ``x`` is this process's rows of a global batch (t spread over all of it)."""
        n, rows = global_rows(x.shape[0], shard)
        t = self.antithetic_times(n, x.device, generator)
        eps = torch.randn((n, *x.shape[1:]), device=x.device, generator=generator)
        eps_0 = torch.randn((n, *x.shape[1:]), device=x.device, generator=generator)
        t, eps, eps_0 = t[rows], eps[rows], eps_0[rows]
        return self.loss_terms(net, x, t, eps, eps_0, variance_gradient=True)

    def scalars(self) -> dict[str, float]:
        """The schedule's endpoints, for logging."""
        return {"gamma_0": self.gamma.gamma_0.item(), "gamma_1": self.gamma.gamma_1.item()}

    @torch.no_grad()
    def nll_terms(self, net: Denoiser, x: Tensor, t_draws: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Unbiased per-image estimates [B] of the bound's terms in bits/dim, averaging the diffusion
        term over ``t_draws`` stratified draws of t per image."""
        draws = []
        for k in range(t_draws):
            u = torch.rand(x.shape[0], device=x.device, generator=generator)
            t = (k + u) / t_draws
            eps = torch.randn(x.shape, device=x.device, generator=generator)
            eps_0 = torch.randn(x.shape, device=x.device, generator=generator)
            draws.append(self.loss_terms(net, x, t, eps, eps_0))
        terms = {k: torch.stack([d[k] for d in draws]).mean(0) for k in ("prior", "reconstruction", "diffusion")}
        terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
        return terms

