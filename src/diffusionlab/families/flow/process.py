"""``flow``: flow matching on the straight path of rectified flow (Lipman et al. 2022; Liu et al. 2022), trained
as Stable Diffusion 3 is (Esser et al. 2024).

x_t = (1 - t) x_0 + t eps for t in [0, 1] (alpha_t = 1 - t, sigma_t = t); the network predicts the velocity
v = dx_t/dt = eps - x_0 and is trained on ||v_hat - (eps - x_0)||^2 with t drawn logit-normal (SD3's
``logit_normal``: t = sigmoid(m + s n), n ~ N(0, 1)) or uniform. Its samples come from the probability-flow
ODE dx/dt = v_hat(x, t), solved from t = 1 (pure noise) to t = 0 by the ``euler`` and ``heun`` samplers.
From v_hat at x_t: x_0_hat = x_t - t v_hat and eps_hat = x_t + (1 - t) v_hat. It has no variational bound;
its likelihood is the ODE's (:mod:`diffusionlab.core.ode`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.process import Denoiser, ProcessDefaults, SamplerOptions, TimeGrid, shifted_grid
from ...distributed import Shard, global_rows
from ...sampling.names import ODE_SAMPLERS
from .params import FlowParams

NETWORK_TIME_SCALE = 1000.0


class RectifiedFlow(ProcessDefaults, nn.Module):
    """The straight-path process; it keeps no state. The network sees t scaled to [0, 1000]."""

    SAMPLERS = ODE_SAMPLERS

    def __init__(self, time_sampling: str = "logit_normal", logit_mean: float = 0.0, logit_std: float = 1.0):
        super().__init__()
        if time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"unknown time sampling '{time_sampling}'; known: logit_normal, uniform")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def out_channels(self, channels: int) -> int:
        return channels

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) = (1 - t, t)."""
        return 1 - t, t

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as (x_t, t) -> v_hat for t in [0, 1]."""
        return lambda x, t: net(x, NETWORK_TIME_SCALE * t)

    def sample_times(self, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device, generator=generator)
        normal = torch.randn(n, device=device, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * normal)

    def training_losses(self, net: Denoiser, x0: Tensor, t: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """Per-example ``loss`` = ``mse`` [B]: the mean over pixels of (v_hat(x_t, t) - (eps - x_0))^2."""
        b = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        x_t = (1 - b) * x0 + b * eps
        v = self.denoiser(net)(x_t, t.to(x0.dtype))
        mse = (v.float() - (eps - x0).float()).pow(2).flatten(1).mean(1)
        return {"loss": mse, "mse": mse}

    def losses_for_batch(self, net: Denoiser, x0: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms for a batch (with a ``shard``: this process's rows of the global batch's t and eps)."""
        n, rows = global_rows(x0.shape[0], shard)
        t = self.sample_times(n, x0.device, generator)
        eps = torch.randn((n, *x0.shape[1:]), device=x0.device, generator=generator)
        return self.training_losses(net, x0, t[rows], eps[rows])

    def scalars(self) -> dict[str, float]:
        return {}

    def _grid(self, times: list[float]) -> TimeGrid:
        return TimeGrid(times, [1 - t for t in times], list(times))

    def time_grid(self, steps: int, shift: float = 1.0) -> TimeGrid:
        """Times 1, ..., 1/steps after the time shift, then the data at t = 0."""
        return self._grid(shifted_grid(steps, shift, include_zero=False))

    def likelihood_grid(self, steps: int) -> TimeGrid:
        return self._grid(shifted_grid(steps + 1, 1.0, include_zero=True))

    def karras_grid(self, steps: int, rho: float) -> TimeGrid:
        raise ValueError("the flow's level sigma / alpha = t / (1 - t) is infinite at its start, t = 1, which a "
                         "Karras grid cannot reach: set sample.grid: default (the shifted time grid) for a flow")

    def logsnr_grid(self, steps: int) -> TimeGrid:
        raise ValueError(f"the flow family samples with {', '.join(ODE_SAMPLERS)} only, not the DPM-Solvers")

    def sampler(self, options: SamplerOptions, steps: int):
        raise ValueError(f"the flow family samples with {', '.join(ODE_SAMPLERS)} only, not '{options.sampler}'")

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        return x_t - sigma * output, x_t + alpha * output

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        """The ODE in x itself and t = sigma: dx/dt = v."""
        return 1.0, sigma

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        return eps - x0


def build(m: FlowParams, device: torch.device | str = "cpu") -> RectifiedFlow:
    return RectifiedFlow(m.time_sampling, m.logit_mean, m.logit_std).to(device)

