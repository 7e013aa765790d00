"""The family-agnostic samplers and the registry that builds any sampler by name.

DPM-Solver++(2M) runs on the process's uniform-logSNR grid, Euler and Heun on its time grid
(:mod:`diffusionlab.sampling.ode`); each sees the grid's marginals and the process's conversion of the
network's output to (x_0, eps), never a family's internals. ``ddpm`` and ``ddim`` are the families' own
(:meth:`Process.sampler`): ancestral sampling on a beta table or on VDM's posterior belongs to its family.
Adding a sampler: a function ``(process, options, steps) -> Sampler`` and its line in :data:`BUILDERS`, with
its name in :mod:`diffusionlab.sampling.names`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..core.process import Denoiser, Process, SamplerOptions, TimeGrid
from ..core.updates import Callback, GridSampler, batch_time, noise_like
from .base import Sampler
from .names import SAMPLERS
from .ode import Churn, EulerSampler, HeunSampler


class DPMSolverPP2M(GridSampler):
    """DPM-Solver++(2M) of Lu et al. 2022 (Algorithm 2): the multistep second-order solver of the
    probability-flow ODE in its data-prediction form, for 10-25 steps.

    With lambda = log(alpha / sigma), h_i = lambda_{t_i} - lambda_{t_{i-1}} and D_i the predicted x_0
    (clipped when ``clip_denoised``):
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D,
        D = (1 + 1 / (2 r_i)) D_{i-1} - 1 / (2 r_i) D_{i-2},  r_i = h_{i-1} / h_i,
    first order (D = D_{i-1}) at the first step, and the final step, to sigma = 0, returns D_{i-1}. The grid is
    the process's uniform-logSNR one (:meth:`Process.logsnr_grid`), where the solver's error is smallest.
    Deterministic: the generator is not used.

    ``stochastic``: SDE-DPM-Solver++(2M) (Lu et al. 2022, the solver of the reverse SDE in the same
    data-prediction form), with the same D:
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-h_i} x_{t_{i-1}} - alpha_{t_i} (e^{-2 h_i} - 1) D
                  + sigma_{t_i} sqrt(1 - e^{-2 h_i}) z.
    Its first-order step is the DDPM posterior q(x_{t_i} | x_{t_{i-1}}, x_0 = D); the fresh noise
    corrects the model's errors as ancestral sampling does, where the ODE carries them to the end.
    """

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True, stochastic: bool = False):
        super().__init__(process, grid)
        self.clip_denoised, self.stochastic = clip_denoised, stochastic

    def __call__(self, model: Denoiser, x: Tensor, generator: Any = None, start: int = 0,
                 callback: Callback | None = None) -> Tensor:
        self.check_start(start)
        previous: tuple[Tensor, float] | None = None  # the last step's D and h: a trajectory starts first-order
        for i in range(start, len(self.grid)):
            t = self.grid.times[i]
            (alpha_t, sigma_t), (alpha_s, sigma_s) = self.marginals[i], self.marginal_after(i)
            x0, _ = self.process.x0_eps(model(x, batch_time(t, x)), x, alpha_t, sigma_t)
            if self.clip_denoised:
                x0 = x0.clamp(-1, 1)
            if sigma_s == 0:
                x_s = x0
            else:
                h = math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)
                d = x0
                if previous is not None:
                    previous_x0, previous_h = previous
                    r = previous_h / h
                    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous_x0
                previous = (x0, h)
                if not self.stochastic:
                    x_s = sigma_s / sigma_t * x - alpha_s * math.expm1(-h) * d
                else:
                    x_s = (sigma_s / sigma_t * math.exp(-h) * x - alpha_s * math.expm1(-2 * h) * d
                           + sigma_s * math.sqrt(-math.expm1(-2 * h)) * noise_like(x, generator))
            x = x_s
            if callback is not None:
                callback(i, t, x, x0)
        return x


def ode_grid(process: Process, o: SamplerOptions, steps: int) -> TimeGrid:
    """The grid of euler and heun: the process's time grid with the shift, or the Karras grid."""
    return process.karras_grid(steps, o.rho) if o.grid == "karras" else process.time_grid(steps, o.shift)


def _dpmpp(stochastic: bool) -> Callable[[Process, SamplerOptions, int], Sampler]:
    def build(process: Process, o: SamplerOptions, steps: int) -> Sampler:
        grid = process.karras_grid(steps, o.rho) if o.grid == "karras" else process.logsnr_grid(steps)
        return DPMSolverPP2M(process, grid, o.clip_denoised, stochastic)

    return build


BUILDERS: dict[str, Callable[[Process, SamplerOptions, int], Sampler]] = {
    "dpmpp_2m": _dpmpp(stochastic=False),
    "dpmpp_2m_sde": _dpmpp(stochastic=True),
    "euler": lambda process, o, steps: EulerSampler(process, ode_grid(process, o, steps), o.clip_denoised),
    "heun": lambda process, o, steps: HeunSampler(process, ode_grid(process, o, steps), o.clip_denoised, Churn(
        o.churn, o.churn_tmin, math.inf if o.churn_tmax is None else o.churn_tmax, o.churn_noise)),
}
"""The family-agnostic samplers by name; every other name in :data:`SAMPLERS` is a family's own."""


def make_sampler(options: Any, process: Process, default_steps: int) -> Sampler:
    """Build the sampler ``options.sampler`` names (:class:`SamplerOptions`, or the ``sample`` params section)
    on ``options.steps`` steps (``default_steps`` when None) of the process.

    ``euler`` and ``heun`` solve the process's probability-flow ODE on its :meth:`Process.time_grid` with the
    time shift ``options.shift``; the DPM-Solvers run on its :meth:`Process.logsnr_grid`; with ``options.grid``
    ``karras`` all of them run on its :meth:`Process.karras_grid` instead; ``ddpm`` and ``ddim``
    are the family's own (:meth:`Process.sampler`). A sampler that cannot draw from the process is refused,
    naming the ones that can."""
    options = SamplerOptions.of(options)
    name = options.sampler
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    if name not in process.SAMPLERS:
        raise ValueError(f"sampler '{name}' cannot draw from this model; its samplers: {', '.join(process.SAMPLERS)}")
    steps = default_steps if options.steps is None else options.steps
    build = BUILDERS.get(name)
    return build(process, options, steps) if build is not None else process.sampler(options, steps)

