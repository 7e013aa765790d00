"""The discrete-time process's own samplers: ancestral sampling on its beta table (respaced below T steps,
Nichol & Dhariwal 2021) and DDIM on its alpha_bar table, each on evenly spaced steps or on the listed ones.

Each takes the process that builds it (its :meth:`GaussianDiffusion.sampler`); this module imports no process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from ...core.process import SamplerOptions
from ...core.updates import OneStepSampler, batch_time, ddim_update, denoised, noise_like, vp_grid


def respaced_betas(alphas_cumprod: np.ndarray, kept: list[int]) -> np.ndarray:
    """Betas of the process that visits only the steps ``kept`` (Nichol & Dhariwal 2021, sec. 4):
    beta'_i = 1 - alpha_bar_{k_i} / alpha_bar_{k_{i-1}} over the kept steps in increasing order, so
    its alpha_bar'_i equals alpha_bar_{k_i} at every kept step."""
    steps = sorted(kept)
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[steps]
    return 1.0 - abar / np.append(1.0, abar[:-1])


class DDPMSampler(OneStepSampler):
    """Ancestral sampling of Ho et al. 2020 (Algorithm 2) with the reverse variance of the diffusion
    (the true posterior variance beta~_t by default, or beta_t, or the learned one).

    x_{t-1} = mu~_t(x_t, x_0_hat) + sigma_t z, where x_0_hat is recovered from the predicted
    epsilon (and clipped to [-1, 1] when ``clip_denoised``), and no noise is added at the last step.
    On fewer than T steps (evenly spaced, or the given list) it samples the respaced process of
    :func:`respaced_betas`, calling the network at the original step numbers.
    """

    def __init__(self, diffusion: Any, num_steps: int | list[int], clip_denoised: bool = True):
        kept = visited_steps(diffusion.num_timesteps, num_steps)
        super().__init__(diffusion, vp_grid(kept, [float(diffusion.float64["alphas_cumprod"][t]) for t in kept]))
        self.clip_denoised = clip_denoised
        if len(kept) == diffusion.num_timesteps:
            self.respaced = diffusion
        else:
            d = diffusion
            self.respaced = type(d)(respaced_betas(d.float64["alphas_cumprod"], kept), d.variance, d.loss,
                                    d.vlb_weight, device=d.betas.device, dtype=d.betas.dtype,
                                    min_snr_gamma=d.min_snr_gamma)
        """The process on the visited steps alone, whose step j is the j-th visited step from the data."""

    def update(self, output: Tensor, i: int, x: Tensor, generator: Any) -> tuple[Tensor, Tensor]:
        j = len(self.grid) - 1 - i
        mean, log_variance, x0 = self.respaced.p_mean_variance(output, x, batch_time(j, x), self.clip_denoised)
        if j == 0:
            return mean, x0
        return mean + (0.5 * log_variance).exp() * noise_like(x, generator), x0


class DDIMSampler(OneStepSampler):
    """DDIM of Song et al. 2021 (eq. 12) on an evenly spaced subset of the T steps (or the given list).

    Each step is :func:`ddim_update` between the marginals of the current and the next visited step (the
    data after the last); eta = 1 matches the ancestral sampler on the full schedule.
    """

    def __init__(self, diffusion: Any, num_steps: int | list[int], eta: float = 0.0, clip_denoised: bool = True):
        kept = visited_steps(diffusion.num_timesteps, num_steps)
        super().__init__(diffusion, vp_grid(kept, [float(diffusion.float64["alphas_cumprod"][t]) for t in kept]))
        self.eta, self.clip_denoised = eta, clip_denoised

    def update(self, output: Tensor, i: int, x: Tensor, generator: Any) -> tuple[Tensor, Tensor]:
        at_t = self.marginals[i]
        x0, eps = denoised(self.process, output, x, *at_t, self.clip_denoised)
        return ddim_update(x0, eps, at_t, self.marginal_after(i), self.eta, generator), x0


def even_steps(total: int, num_steps: int) -> list[int]:
    """``num_steps`` of the steps 0..total-1, evenly spaced, in the order sampling visits them."""
    if not 1 <= num_steps <= total:
        raise ValueError(f"the number of steps must be between 1 and T = {total}, got {num_steps}")
    if num_steps == 1:
        return [total - 1]  # one step starts where the noise is: at T - 1
    return np.unique(np.round(np.linspace(0, total - 1, num_steps)).astype(np.int64))[::-1].tolist()


def visited_steps(total: int, num_steps: int | list[int]) -> list[int]:
    """The steps a sampler visits, in order: ``num_steps`` evenly spaced ones (:func:`even_steps`), or the
    given list of steps, each in 0..total-1, sorted from the noisiest."""
    if isinstance(num_steps, int):
        return even_steps(total, num_steps)
    kept = sorted(set(num_steps), reverse=True)
    if not kept or kept[-1] < 0 or kept[0] >= total:
        raise ValueError(f"sampling steps must lie in 0..{total - 1}, got {num_steps}")
    return kept


def discrete_sampler(options: SamplerOptions, diffusion: Any, steps: int) -> OneStepSampler:
    """The own samplers of a discrete-time process: ancestral (respaced when ``steps`` < T) or DDIM on ``steps``
    of the T steps, or on exactly ``options.step_list`` when given."""
    visit = list(options.step_list) or steps
    if options.sampler == "ddpm":
        return DDPMSampler(diffusion, visit, options.clip_denoised)
    if options.sampler == "ddim":
        return DDIMSampler(diffusion, visit, options.eta, options.clip_denoised)
    raise ValueError(f"sampler '{options.sampler}' is not one of the discrete-time process's own (ddpm, ddim)")
