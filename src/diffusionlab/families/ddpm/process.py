"""The discrete-time Gaussian diffusion of Ho et al. 2020 and Nichol & Dhariwal 2021, kept apart from the network.

The object holds the schedule's buffers, the forward process q(x_t | x_0), the posterior
q(x_{t-1} | x_t, x_0), the reverse process p(x_{t-1} | x_t) with a fixed or learned variance,
the terms of the variational bound and the training losses. The network is handed in on each
call, so model families and samplers can be added without touching this file.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ...core.likelihood import LN2, at_least_fp32, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from ...core.process import Denoiser, SamplerOptions, TimeGrid, VariancePreserving, karras_steps, logsnr_uniform_steps, shifted_grid
from ...core.updates import OneStepSampler
from ...distributed import Shard, all_gather_cat, global_rows
from ...sampling.names import VP_SAMPLERS
from .params import DDPMParams, DiscreteParams
from .schedules import make_betas
from .timestep_sampling import UniformSampler

VarianceType = Literal["fixed_small", "fixed_large", "learned_range"]
LossType = Literal["simple", "min_snr", "hybrid", "vlb"]


def extract(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """values[t] reshaped to [B, 1, ..., 1] so it broadcasts against a [B, ...] tensor of ``ndim`` dims."""
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion(VariancePreserving):
    """Discrete-time Gaussian diffusion with betas [T] (float64) and an epsilon-predicting network.

    Index t = 0..T-1 here is step t + 1 of the paper (beta_1..beta_T).

    ``variance`` is the reverse-process variance: ``fixed_small`` (the posterior variance beta~_t),
    ``fixed_large`` (beta_t), or ``learned_range`` (the network also outputs v and the log variance is
    ((v + 1) / 2) log beta_t + (1 - (v + 1) / 2) log beta~_t, Nichol & Dhariwal eq. 15).
    ``loss`` is ``simple`` (L_simple), ``min_snr`` (L_simple weighted by min(SNR_t, gamma) / SNR_t, Hang et
    al. 2023), ``hybrid`` (L_simple + vlb_weight * L_vlb with the mean's gradient stopped inside L_vlb) or
    ``vlb`` (L_vlb alone).
    """

    def __init__(
        self,
        betas: np.ndarray,
        variance: VarianceType = "fixed_small",
        loss: LossType = "simple",
        vlb_weight: float = 0.001,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        min_snr_gamma: float | None = None,
    ):
        if variance not in get_args(VarianceType):
            raise ValueError(f"unknown variance type '{variance}'")
        if loss not in get_args(LossType):
            raise ValueError(f"unknown loss type '{loss}'")
        if loss == "min_snr" and not (min_snr_gamma is not None and min_snr_gamma > 0):
            raise ValueError(f"the min_snr loss needs a positive min_snr_gamma, got {min_snr_gamma}")
        if loss == "hybrid" and variance != "learned_range":
            raise ValueError("the hybrid loss trains a learned variance: use variance 'learned_range'")
        self.variance, self.loss, self.vlb_weight, self.min_snr_gamma = variance, loss, vlb_weight, min_snr_gamma
        self.timestep_sampler = UniformSampler(len(betas))
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # posterior_variance[0] is 0; its log is clipped to the next value, as in Ho et al.'s code. A one-step
        # process (respaced to one step) has no next value: its only step adds no noise, and beta_1 stands in.
        first = posterior_variance[1] if len(betas) > 1 else betas[0]
        arrays = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.append(first, posterior_variance[1:])),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            "fixed_large_log_variance": np.log(np.append(first, betas[1:])),
        }
        if loss == "min_snr":  # min(SNR_t, gamma) / SNR_t with SNR_t = alpha_bar_t / (1 - alpha_bar_t)
            arrays["min_snr_weight"] = np.minimum(1.0, min_snr_gamma * (1.0 - alphas_cumprod) / alphas_cumprod)
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

    def out_channels(self, channels: int) -> int:
        """Channels the network must output for images of ``channels`` channels."""
        return 2 * channels if self.variance == "learned_range" else channels

    def eps_of(self, output: Tensor) -> Tensor:
        """The predicted epsilon: the first half of a learned-variance output, else all of it."""
        return self.split_output(output)[0]

    def split_output(self, model_output: Tensor) -> tuple[Tensor, Tensor | None]:
        """(epsilon, v) from the network output; v is None unless the variance is learned."""
        if self.variance == "learned_range":
            eps, v = model_output.chunk(2, dim=1)
            return eps, v
        return model_output, None

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log variance and predicted x_0 of p(x_{t-1} | x_t).

        The mean is the posterior mean at the predicted x_0 (Ho et al. eq. 11 rewritten); the
        variance is fixed or interpolated as set by ``variance``.
        """
        eps, v = self.split_output(model_output)
        if self.variance == "learned_range":
            frac = (v + 1) / 2
            log_variance = frac * self._at(self.log_betas, t, x_t) + (1 - frac) * self._at(
                self.posterior_log_variance_clipped, t, x_t)
        elif self.variance == "fixed_large":
            log_variance = self._at(self.fixed_large_log_variance, t, x_t).expand_as(x_t)
        else:
            log_variance = self._at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        x0 = self.predict_start_from_noise(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, log_variance, x0

    def vb_terms_bpd(self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_{t-1} of the bound in bits/dim [B]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        and the discretised Gaussian decoder's -log p(x_0 | x_1) at t = 0 (Ho et al. eq. 5)."""
        true_mean, _, true_log_variance = self.q_posterior(x_start, x_t, t)
        mean, log_variance, _ = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / LN2
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_variance)) / LN2
        return torch.where(t == 0, decoder_nll, kl)

    def prior_bpd(self, x_start: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim [B]."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, variance = self.q_mean_variance(x_start, t)
        zero = torch.zeros_like(mean)
        return mean_flat(normal_kl(mean, variance.log(), zero, zero)) / LN2

    def training_losses(self, model: Denoiser, x_start: Tensor, t: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """Per-example loss terms [B] at steps t: ``mse`` (L_simple, Ho et al. eq. 14), ``vb`` (L_{t-1} in
        bits/dim, when the loss or the variance needs it) and ``loss``, the one minimised.

        ``hybrid``: mse + vlb_weight * T * vb with the mean frozen inside vb (Nichol & Dhariwal sec. 3.1),
        so lambda = 0.001 weighs the bound L_vlb = sum_t L_t, of which T * vb is the one-sample estimate.
        ``vlb``: T * vb, an unbiased estimate of L_vlb when t is uniform (reweighted otherwise).
        ``min_snr``: mse * min(SNR_t, gamma) / SNR_t: the steps of little noise, whose SNR is above gamma, weigh
        gamma / SNR_t, the noisier ones 1 (Hang et al. 2023: the eps-prediction form of min-SNR-gamma).
        """
        x_t = self.q_sample(x_start, t, noise)
        output = model(x_t, t)
        eps, v = self.split_output(output)
        terms = {"mse": mean_flat(at_least_fp32(noise - eps) ** 2)}
        if self.loss in ("simple", "min_snr"):
            terms["loss"] = terms["mse"] * (self.min_snr_weight[t] if self.loss == "min_snr" else 1.0)
            return terms
        frozen = output if self.loss == "vlb" else torch.cat([eps.detach(), v], dim=1)
        terms["vb"] = self.vb_terms_bpd(at_least_fp32(frozen), at_least_fp32(x_start), at_least_fp32(x_t), t)
        scaled_vb = self.num_timesteps * terms["vb"]
        terms["loss"] = terms["mse"] + self.vlb_weight * scaled_vb if self.loss == "hybrid" else scaled_vb
        return terms

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as a function of (x_t, t): the discrete step is its time input."""
        return net

    def scalars(self) -> dict[str, float]:
        return {}

    SAMPLERS = VP_SAMPLERS

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]

    def time_grid(self, steps: int, shift: float = 1.0) -> TimeGrid:
        """``steps`` of the steps T-1..0, evenly spaced in u = t / (T - 1) after the time shift (the DDIM
        steps when ``shift`` is 1; steps the shift rounds together are visited once)."""
        total = self.num_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"the number of steps must be between 1 and T = {total}, got {steps}")
        us = shifted_grid(steps, shift, include_zero=True)
        return self._grid(sorted({int(round(u * (total - 1))) for u in us}, reverse=True))

    def logsnr_grid(self, steps: int) -> TimeGrid:
        """``steps`` of the T steps, from T - 1 to 0, uniform in log-SNR."""
        abar = self.float64["alphas_cumprod"]
        return self._grid(logsnr_uniform_steps(0.5 * np.log(abar / (1 - abar)), steps))

    def karras_grid(self, steps: int, rho: float) -> TimeGrid:
        """``steps`` of the T steps, from T - 1 to 0, nearest to the Karras grid of their sigma / alpha."""
        abar = self.float64["alphas_cumprod"]
        return self._grid(karras_steps(0.5 * np.log(abar / (1 - abar)), steps, rho))

    def likelihood_grid(self, steps: int) -> TimeGrid:
        """``steps`` + 1 of the T steps uniform in log-SNR (where the ODE's divergence changes evenly)."""
        return self.logsnr_grid(min(steps + 1, self.num_timesteps))

    def time_label(self, t: int) -> str:
        """Step index t is step t + 1 of the paper's 1..T."""
        return f"t={t + 1}"

    def _grid(self, times: list[int]) -> TimeGrid:
        abar = self.float64["alphas_cumprod"]
        return TimeGrid(times, [float(np.sqrt(abar[t])) for t in times], [float(np.sqrt(1 - abar[t])) for t in times])

    def sampler(self, options: SamplerOptions, steps: int) -> OneStepSampler:
        """Ancestral sampling on the beta table (respaced below T steps) or DDIM on the alpha_bar table, from
        :mod:`.samplers`, imported here: training does not load (nor, in DVC, depend on) the samplers; the
        stages that sample import them through :mod:`diffusionlab.families.samplers`."""
        from .samplers import discrete_sampler  # deps: callers

        return discrete_sampler(options, self, steps)

    def training_state(self) -> dict[str, Tensor]:
        """The importance sampler's loss history (none for uniform t)."""
        return self.timestep_sampler.state_dict()

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        self.timestep_sampler.load_state_dict(state)

    def state_dict(self) -> dict[str, Tensor]:
        """Nothing is learned or kept beyond the schedule, which the params rebuild."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"a discrete-time process keeps no state, got {sorted(state)}")

    def parameters(self) -> list:
        return []

    def eval(self) -> GaussianDiffusion:
        return self

    def losses_for_batch(self, model: Denoiser, x_start: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms for a batch, with t drawn by ``timestep_sampler`` and the loss reweighted so its
        mean stays an unbiased estimate under uniform t. With a ``shard``, ``x_start`` is this process's
        rows of a global batch, and the importance sampler learns from the losses of all of it."""
        n, rows = global_rows(x_start.shape[0], shard)
        t, weights = self.timestep_sampler.sample(n, x_start.device, generator)
        noise = torch.randn((n, *x_start.shape[1:]), device=x_start.device, generator=generator)
        t, weights, noise = t[rows], weights[rows], noise[rows]
        terms = self.training_losses(model, x_start, t, noise)
        if self.timestep_sampler.learns_from_losses:
            self.timestep_sampler.update(all_gather_cat(t), all_gather_cat(terms["loss"].detach()))
        terms["loss"] = terms["loss"] * weights
        return terms

    @torch.no_grad()
    def nll_terms(self, model: Denoiser, x_start: Tensor, t_draws: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Unbiased per-image estimates [B] of the bound in bits/dim: ``prior`` L_T exactly,
        ``reconstruction`` L_0 from one draw of x_1, ``diffusion`` sum_{t=1}^{T-1} L_t as (T - 1) times
        the mean of L_t over ``t_draws`` uniform draws of t, and their ``total``."""
        b, device = x_start.shape[0], x_start.device

        def term(t: Tensor) -> Tensor:
            noise = torch.randn(x_start.shape, device=device, generator=generator)
            x_t = self.q_sample(x_start, t, noise)
            return self.vb_terms_bpd(model(x_t, t), x_start, x_t, t)

        zero = torch.zeros(b, dtype=torch.long, device=device)
        terms = {"prior": self.prior_bpd(x_start), "reconstruction": term(zero)}
        draws = [term(torch.randint(1, self.num_timesteps, (b,), device=device, generator=generator))
                 for _ in range(t_draws)]
        terms["diffusion"] = (self.num_timesteps - 1) * torch.stack(draws).mean(0)
        terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
        return terms


def build_diffusion(m: DiscreteParams, variance: VarianceType, loss: LossType, vlb_weight: float = 0.001,
                    device: torch.device | str = "cpu", min_snr_gamma: float | None = None) -> GaussianDiffusion:
    """The discrete-time process of a ``ddpm`` or ``vlb`` block: T steps of its beta schedule."""
    return GaussianDiffusion(make_betas(m.schedule, m.timesteps), variance, loss, vlb_weight, device=device,
                             min_snr_gamma=min_snr_gamma)


def build(m: DDPMParams, device: torch.device | str = "cpu") -> GaussianDiffusion:
    return build_diffusion(m, m.variance, m.loss, device=device, min_snr_gamma=m.min_snr_gamma)
