"""VDM's own samplers: ancestral sampling from the posterior on its schedule (eta = 1), or DDIM-style.

Each takes the process that builds it (:meth:`VDM.sampler`); this module imports no process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core.process import SamplerOptions
from ...core.updates import VariancePreservingSampler, ddim_step


class VDMSampler(VariancePreservingSampler):
    """VDM's sampler on an even grid of ``num_steps`` times in [0, 1]: :func:`ddim_step` with
    a = alpha^2 = sigmoid(-gamma(t)) from the learned schedule. eta = 1 is ancestral sampling from the
    posterior q(z_s | z_t, x = x_0_hat) (Kingma et al. eq. 32); eta < 1 is DDIM-style. The last step
    returns x_0_hat, the decoder's mean (sigma_0 / alpha_0 is far below the width of a pixel level).
    """

    def __init__(self, vdm: Any, num_steps: int, eta: float = 1.0, clip_denoised: bool = True):
        self.vdm = self.process = vdm
        self.eta, self.clip_denoised = eta, clip_denoised
        self.set_timesteps(num_steps)

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps < 1:
            raise ValueError(f"VDM sampling needs at least one step, got {num_steps}")
        self.timesteps = [i / num_steps for i in range(num_steps, 0, -1)]
        self._prev = {t: (i - 1) / num_steps for i, t in zip(range(num_steps, 0, -1), self.timesteps)}
        with torch.no_grad():
            gammas = self.vdm.gamma(torch.tensor(self.timesteps, dtype=torch.float64,
                                                 device=self.vdm.gamma.gamma_0.device))
        self.alpha_bars = torch.sigmoid(-gammas.double()).tolist()

    @torch.no_grad()
    def step(self, model_output: Tensor, t: float, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        s = self._prev[t]
        times = torch.tensor([t, s], device=x_t.device, dtype=torch.float64)
        a_t, a_s = torch.sigmoid(-self.vdm.gamma(times).double()).tolist()
        return ddim_step(x_t, model_output, a_t, 1.0 if s == 0 else a_s, self.eta, self.clip_denoised, generator)


def vdm_sampler(options: SamplerOptions, vdm: Any, steps: int) -> VDMSampler:
    """The own samplers of VDM on ``steps`` times of its schedule: ancestral (eta = 1) or DDIM-style."""
    if options.sampler in ("ddpm", "ddim"):
        return VDMSampler(vdm, steps, 1.0 if options.sampler == "ddpm" else options.eta, options.clip_denoised)
    raise ValueError(f"sampler '{options.sampler}' is not one of VDM's own (ddpm, ddim)")
