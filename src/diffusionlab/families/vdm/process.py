"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho 2021), kept apart from the network.

Continuous time t in [0, 1], z_t = alpha_t x + sigma_t eps with the log-SNR schedule gamma(t) of
:mod:`diffusionlab.families.vdm.gamma`. The negative ELBO of 8-bit data x (scaled to [-1, 1]) is

    prior          KL(q(z_1 | x) || N(0, I))
    reconstruction -log p(x | z_0), a Gaussian of mean z_0 / alpha_0 and scale sigma_0 / alpha_0
                   discretised into the 256 bins of the data
    diffusion      0.5 E_{t ~ U(0,1), eps} [gamma'(t) ||eps - eps_hat(z_t; t)||^2]   (eq. 17)

each reported in bits per dimension. The network sees the log-SNR: its time input is gamma(t)
mapped linearly from [gamma_min, gamma_max] onto [0, 1000].

Training may weight the diffusion term by w(lambda) of the log-SNR lambda = -gamma (Kingma & Gao 2023,
:mod:`diffusionlab.families.vdm.weighting`) and draw lambda from an adaptive density instead of through gamma(t)
(:mod:`diffusionlab.families.vdm.logsnr_sampling`); the bound reported in bits/dim stays the unweighted ELBO. The
network may predict eps, v = alpha eps - sigma x or x itself (``prediction``); the process converts its
output to eps, so samplers, guidance and the bound see one interface.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from ...core.likelihood import (
    at_least_fp32,
    discretized_gaussian_log_likelihood,
    nats_to_bits_per_dim,
    normal_kl,
    sum_flat,
)
from ...core.process import Denoiser, SamplerOptions, TimeGrid, VariancePreserving, karras_steps, logsnr_uniform_steps, shifted_grid
from ...core.updates import OneStepSampler
from ...distributed import Shard, all_gather_cat, global_rows
from ...sampling.names import VP_SAMPLERS
from .gamma import Gamma, make_gamma
from .logsnr_sampling import AdaptiveLogSNR
from .params import VDMParams
from .weighting import Weighting

NETWORK_TIME_SCALE = 1000.0
Prediction = Literal["eps", "v", "x0"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def _b(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = sqrt(sigmoid(-gamma)), sigma = sqrt(sigmoid(gamma)) (variance preserving)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def target(prediction: Prediction, x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """What a network of the given ``prediction`` should output for z = alpha x + sigma eps."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x
    if prediction == "x0":
        return x
    raise ValueError(f"unknown prediction '{prediction}'; known: {', '.join(PREDICTIONS)}")


def eps_from(prediction: Prediction, output: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps from the network's ``output`` at z: itself, alpha v + sigma z, or (z - alpha x) / sigma
    (alpha^2 + sigma^2 = 1)."""
    if prediction == "eps":
        return output
    if prediction == "v":
        return alpha * output + sigma * z
    if prediction == "x0":
        return (z - alpha * output) / sigma
    raise ValueError(f"unknown prediction '{prediction}'; known: {', '.join(PREDICTIONS)}")


class VDM(VariancePreserving, nn.Module):
    """The VDM noise process; its parameters are those of the schedule gamma(t), its state the adaptive
    density of log-SNR levels when it has one."""

    def __init__(self, gamma: Gamma, weighting: Weighting | None = None, prediction: Prediction = "eps",
                 levels: AdaptiveLogSNR | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; known: {', '.join(PREDICTIONS)}")
        self.gamma = gamma
        self.weighting = weighting or Weighting("elbo", -gamma.gamma_max)
        self.prediction = prediction
        self.levels = levels

    def out_channels(self, channels: int) -> int:
        return channels

    def network_time(self, gamma: Tensor) -> Tensor:
        g = self.gamma
        return NETWORK_TIME_SCALE * (gamma - g.gamma_min) / (g.gamma_max - g.gamma_min)

    def predict_eps(self, net: Denoiser, z: Tensor, gamma: Tensor) -> Tensor:
        """The network's output at (z, gamma [B]) converted to eps."""
        output = net(z, self.network_time(gamma))
        if self.prediction == "eps":
            return output
        alpha, sigma = alpha_sigma(gamma)
        return eps_from(self.prediction, output, z, _b(alpha, z).to(output.dtype), _b(sigma, z).to(output.dtype))

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as a function of (z_t, t) for t in [0, 1], predicting eps."""
        return lambda z, t: self.predict_eps(net, z, self.gamma(t))

    @staticmethod
    def antithetic_times(batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """Low-discrepancy t: (u + i / B) mod 1 for one u ~ U(0, 1), so the batch covers [0, 1] evenly."""
        u = torch.rand((), device=device, generator=generator)
        return torch.remainder(u + torch.arange(batch_size, device=device) / batch_size, 1.0)

    def loss_terms(self, net: Denoiser, x: Tensor, t: Tensor, eps: Tensor, eps_0: Tensor,
                   variance_gradient: bool = False) -> dict[str, Tensor]:
        """Per-example terms [B] in bits/dim at times t [B] of the schedule gamma: ``prior``,
        ``reconstruction``, ``diffusion`` (the ELBO's, eq. 17), ``elbo`` (their sum, the negative ELBO),
        ``weighted`` (w(lambda) times the diffusion term), ``loss`` (the training objective: the
        negative ELBO for the ``elbo`` weighting, else the weighted term) and ``mse``.

        With ``variance_gradient`` the schedule's interior receives the gradient of E[diffusion^2]
        instead of E[loss] (sec. 5.3, app. I.2): the bound does not depend on the interior in
        continuous time, so this lowers the variance of its estimate. The endpoints and the
        network keep the gradient of the bound.
        """
        g_t, dg_t, s, ds = self.gamma.gamma_and_derivative(t)
        terms = self.terms_at(net, x, g_t, dg_t, eps, eps_0)
        if variance_gradient and torch.is_grad_enabled() and self.gamma.interior_parameters():
            scale = 2 * terms["diffusion"].detach()
            s.register_hook(lambda grad: grad * scale)
            ds.register_hook(lambda grad: grad * scale)
        return terms

    def terms_at(self, net: Denoiser, x: Tensor, gamma: Tensor, rate: Tensor, eps: Tensor,
                 eps_0: Tensor) -> dict[str, Tensor]:
        """The terms of :meth:`loss_terms` at log-SNR -gamma [B], the diffusion integrand scaled by
        ``rate`` [B]: gamma'(t) for t ~ U(0, 1), or 1 / p(lambda) for lambda drawn with density p."""
        dims = x[0].numel()
        alpha_t, sigma_t = alpha_sigma(gamma)
        z_t = _b(alpha_t, x) * x + _b(sigma_t, x) * eps
        eps_hat = self.predict_eps(net, z_t, gamma)
        squared = sum_flat(at_least_fp32(eps - eps_hat) ** 2)
        diffusion = nats_to_bits_per_dim(0.5 * rate * squared, dims)
        weighted = diffusion if self.weighting.is_elbo else diffusion * self.weighting(-gamma.detach())

        alpha_1, sigma_1 = alpha_sigma(self.gamma.gamma_1)
        zero = torch.zeros_like(x)
        prior = nats_to_bits_per_dim(sum_flat(normal_kl(alpha_1 * x, 2 * sigma_1.log() + zero, zero, zero)), dims)

        g_0 = self.gamma.gamma_0
        alpha_0, sigma_0 = alpha_sigma(g_0)
        z_0 = alpha_0 * x + sigma_0 * eps_0
        log_scale = 0.5 * g_0 + zero  # log(sigma_0 / alpha_0)
        reconstruction = nats_to_bits_per_dim(-sum_flat(discretized_gaussian_log_likelihood(x, z_0 / alpha_0, log_scale)), dims)
        elbo = prior + reconstruction + diffusion
        return {
            "loss": elbo if self.weighting.is_elbo else weighted,
            "elbo": elbo,
            "prior": prior,
            "reconstruction": reconstruction,
            "diffusion": diffusion,
            "weighted": weighted,
            "mse": squared / dims,
        }

    def losses_for_batch(self, net: Denoiser, x: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms for a batch. Through the schedule: antithetic t, fresh noise, the
        variance-minimising schedule gradient. With adaptive levels: stratified lambda from their
        density, which then learns from the batch's weighted losses. With a ``shard``, ``x`` is this
        process's rows of a global batch (t or lambda spread over all of it)."""
        n, rows = global_rows(x.shape[0], shard)
        if self.levels is None:
            t = self.antithetic_times(n, x.device, generator)
        else:
            lam, density = self.levels.sample(n, x.device, generator, x.dtype)
        eps = torch.randn((n, *x.shape[1:]), device=x.device, generator=generator)
        eps_0 = torch.randn((n, *x.shape[1:]), device=x.device, generator=generator)
        eps, eps_0 = eps[rows], eps_0[rows]
        if self.levels is None:
            return self.loss_terms(net, x, t[rows], eps, eps_0, variance_gradient=True)
        lam, density = lam[rows], density[rows]
        terms = self.terms_at(net, x, -lam, 1.0 / density, eps, eps_0)
        # f(lambda) = p(lambda) times the estimate: the weighted loss per unit of lambda at each draw
        self.levels.update(all_gather_cat(lam), all_gather_cat(terms["weighted"].detach() * density))
        return terms

    SAMPLERS = VP_SAMPLERS

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return alpha_sigma(self.gamma(t))

    def _grid(self, times: list[float]) -> TimeGrid:
        with torch.no_grad():
            gammas = self.gamma(torch.tensor(times, dtype=torch.float64, device=self.gamma.gamma_0.device)).double()
        alphas, sigmas = alpha_sigma(gammas)
        return TimeGrid(times, alphas.tolist(), sigmas.tolist())

    def time_grid(self, steps: int, shift: float = 1.0) -> TimeGrid:
        """Times 1, ..., 1/steps after the time shift (the grid of :class:`VDMSampler` when ``shift`` is 1)."""
        return self._grid(shifted_grid(steps, shift, include_zero=False))

    def likelihood_grid(self, steps: int) -> TimeGrid:
        return self._grid(shifted_grid(steps + 1, 1.0, include_zero=True))

    def _fine_lambdas(self) -> tuple[np.ndarray, np.ndarray]:
        """A 10,001-point grid of [0, 1] and lambda = log(alpha / sigma) = -gamma(t) / 2 there."""
        grid = np.linspace(0.0, 1.0, 10_001)
        with torch.no_grad():
            gammas = self.gamma(torch.tensor(grid, device=self.gamma.gamma_0.device)).double().cpu().numpy()
        return grid, -gammas / 2

    def logsnr_grid(self, steps: int) -> TimeGrid:
        """``steps`` times of a 10,001-point grid of [0, 1], from 1 to 0, uniform in the log-SNR -gamma(t)."""
        grid, lambdas = self._fine_lambdas()
        return self._grid([float(grid[i]) for i in logsnr_uniform_steps(lambdas, steps)])

    def karras_grid(self, steps: int, rho: float) -> TimeGrid:
        """``steps`` times of the same fine grid, from 1 to 0, nearest to the Karras grid of sigma / alpha."""
        grid, lambdas = self._fine_lambdas()
        return self._grid([float(grid[i]) for i in karras_steps(lambdas, steps, rho)])

    def sampler(self, options: SamplerOptions, steps: int) -> OneStepSampler:
        """Ancestral sampling from the posterior on its schedule (eta = 1), or DDIM-style, from :mod:`.samplers`,
        imported here: training does not load (nor, in DVC, depend on) the samplers; the stages that sample
        import them through :mod:`diffusionlab.families.samplers`."""
        from .samplers import vdm_sampler  # deps: callers

        return vdm_sampler(options, self, steps)

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



def build(m: VDMParams, device: torch.device | str = "cpu") -> VDM:
    levels = AdaptiveLogSNR(-m.gamma_max, -m.gamma_min) if m.noise_sampling == "adaptive" else None
    return VDM(make_gamma(m.gamma, m.gamma_min, m.gamma_max), Weighting(m.weighting, -m.gamma_max, m.sigmoid_bias),
               m.prediction, levels).to(device)
