"""VDM's own samplers: ancestral sampling from the posterior on its schedule (eta = 1), or DDIM-style.

Each takes the process that builds it (:meth:`VDM.sampler`); this module imports no process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core.process import SamplerOptions
from ...core.updates import OneStepSampler, ddim_update, denoised, vp_grid


class VDMSampler(OneStepSampler):
    """VDM's sampler on an even grid of ``num_steps`` times in [0, 1]: :func:`ddim_update` between the
    marginals alpha^2 = sigmoid(-gamma(t)) of the learned schedule at each time and the next. eta = 1 is ancestral
    sampling from the posterior q(z_s | z_t, x = x_0_hat) (Kingma et al. eq. 32); eta < 1 is DDIM-style. The last
    step returns x_0_hat, the decoder's mean (sigma_0 / alpha_0 is far below the width of a pixel level).
    """

    def __init__(self, vdm: Any, num_steps: int, eta: float = 1.0, clip_denoised: bool = True):
        if num_steps < 1:
            raise ValueError(f"VDM sampling needs at least one step, got {num_steps}")
        times = [i / num_steps for i in range(num_steps, 0, -1)]
        with torch.no_grad():
            gammas = vdm.gamma(torch.tensor(times, dtype=torch.float64, device=vdm.gamma.gamma_0.device))
        super().__init__(vdm, vp_grid(times, torch.sigmoid(-gammas.double()).tolist()))
        self.eta, self.clip_denoised = eta, clip_denoised

    def update(self, output: Tensor, i: int, x: Tensor, generator: Any) -> tuple[Tensor, Tensor]:
        at_t = self.marginals[i]
        x0, eps = denoised(self.process, output, x, *at_t, self.clip_denoised)
        return ddim_update(x0, eps, at_t, self.marginal_after(i), self.eta, generator), x0


def vdm_sampler(options: SamplerOptions, vdm: Any, steps: int) -> VDMSampler:
    """The own samplers of VDM on ``steps`` times of its schedule: ancestral (eta = 1) or DDIM-style."""
    if options.sampler in ("ddpm", "ddim"):
        return VDMSampler(vdm, steps, 1.0 if options.sampler == "ddpm" else options.eta, options.clip_denoised)
    raise ValueError(f"sampler '{options.sampler}' is not one of VDM's own (ddpm, ddim)")
