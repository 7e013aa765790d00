"""The probability-flow ODE of any family: the ``euler`` and ``heun`` samplers, and bits/dim through the ODE.

Every process writes x_t = alpha_t x_0 + sigma_t eps and gives the ODE in variables of its own
(:meth:`Process.ode_variables`): a state y = x / c and a time tau in which dy/dtau = f(x_0_hat, eps_hat).

- The diffusion families use the EDM formulation of Karras et al. 2022: c = alpha, tau = sigma / alpha and
  f = eps_hat (dy/dtau = (y - D(y)) / tau). An Euler step is then exactly deterministic DDIM.
- The flow family uses its own straight path: c = 1, tau = t and f = eps_hat - x_0_hat, the velocity
  (Lipman et al. 2022; the Euler sampler of Esser et al. 2024).

Heun's method (Karras et al., Algorithm 1) corrects each step with the slope at its end, except the last
step, to the data, which is an Euler step: N steps take 2N - 1 network evaluations.

The likelihood integrates the same ODE from the data to the noise with the instantaneous change of
variables (Chen et al. 2018; Song et al. 2021, app. D.2), the divergence estimated by Hutchinson's trace
estimator (Grathwohl et al. 2018), on uniformly dequantised 8-bit data. It integrates on the straight path
of the flow family for every family (y = x / (alpha + sigma), tau = sigma / (alpha + sigma)), whose time is
bounded, so that a few dozen Heun steps suffice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .likelihood import LN2
from .process import Denoiser, Process, TimeGrid


class EulerSampler:
    """Euler steps on the probability-flow ODE of ``process`` over its ``grid``, ending at the data.

    With ``clip_denoised`` the predicted x_0 is clipped to [-1, 1] and eps recomputed from it, as DDIM does.
    Deterministic: the generator is not used. One step needs only the current output, so inpainting and
    round trips may use it."""

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True):
        # grid: the times of the steps; timesteps: the times of the network evaluations (Heun: more)
        self.process, self.grid, self.clip_denoised = process, grid, clip_denoised
        ode = [process.ode_variables(a, s) for a, s in zip(grid.alphas, grid.sigmas)]
        self._c = [c for c, _ in ode] + [1.0]
        self._tau = [tau for _, tau in ode] + [0.0]
        self._index = {t: i for i, t in enumerate(grid.times)}
        self.timesteps = list(grid.times)
        self.marginals = list(zip(grid.alphas, grid.sigmas))

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps != len(self.grid):
            raise ValueError("build a new ODE sampler for another number of steps (make_sampler)")

    def slope(self, model_output: Tensor, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dy/dtau, predicted x_0) at grid time i from the model's output at x."""
        alpha, sigma = self.grid.alphas[i], self.grid.sigmas[i]
        x0, eps = self.process.x0_eps(model_output[:, :x.shape[1]], x, alpha, sigma)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - alpha * x0) / sigma
        return self.process.ode_derivative(x0, eps), x0

    def euler(self, x: Tensor, i: int, slope: Tensor) -> Tensor:
        """x at grid time i + 1 (the data after the last) from x at time i: y' = y + (tau' - tau) slope."""
        return self._c[i + 1] * (x / self._c[i] + (self._tau[i + 1] - self._tau[i]) * slope)

    def step(self, model_output: Tensor, t, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        i = self._index[t]
        slope, x0 = self.slope(model_output, i, x_t)
        return self.euler(x_t, i, slope), x0


class HeunSampler(EulerSampler):
    """Heun's second-order steps (Karras et al. 2022, Algorithm 1) on the same ODE: each step's Euler
    prediction is corrected with the mean of the slopes at its two ends; the last step, to the data, stays
    Euler. ``timesteps`` lists every evaluation (each time after the first twice: the prediction, then the
    corrected state), so the sampling loop stays the same; :meth:`reset` starts a trajectory."""

    def __init__(self, process: Process, grid: TimeGrid, clip_denoised: bool = True):
        super().__init__(process, grid, clip_denoised)
        self._visit = [0, *(i for i in range(1, len(grid)) for _ in range(2))]
        self.timesteps = [grid.times[i] for i in self._visit]
        self.marginals = [(grid.alphas[i], grid.sigmas[i]) for i in self._visit]
        self.reset()

    def reset(self) -> None:
        self._call, self._pending = 0, None

    def step(self, model_output: Tensor, t, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        i = self._visit[self._call]
        self._call += 1
        slope, x0 = self.slope(model_output, i, x_t)
        if self._pending is not None:  # the prediction's end: correct the step from grid time i - 1
            x, first = self._pending
            self._pending = None
            y = x / self._c[i - 1] + (self._tau[i] - self._tau[i - 1]) * 0.5 * (first + slope)
            return self._c[i] * y, x0
        if i < len(self.grid) - 1:
            self._pending = (x_t, slope)
        return self.euler(x_t, i, slope), x0


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
    log p(x) = log N(x_T; 0, I) + D log(c_T / c_0) + integral of div_y f dtau, c = alpha + sigma.
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
            x0, eps = process.x0_eps(model(x_t, t)[:, :x.shape[1]], x_t, alphas[i], sigmas[i])
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
    prior = -0.5 * (x_T.flatten(1) ** 2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return prior + dims * math.log(scales[-1] / scales[0]) + integral


def ode_bits_per_dim(process: Process, model: Denoiser, images: Tensor, steps: int, probes: int = 1,
                     generator: torch.Generator | None = None) -> Tensor:
    """bits/dim [B] of 8-bit ``images`` (uint8 [B, C, H, W]) through the ODE, on uniformly dequantised data:
    x = (k + u) / 128 - 1 with u ~ U(0, 1) per pixel, and -log2 P(k) <= -log2 p(x) + D log2 128 (the bin width
    2/256 of the model range [-1, 1])."""
    u = torch.rand(images.shape, device=images.device, generator=generator)
    x = (images.double() + u.double()) / 128.0 - 1.0
    nll = -ode_log_likelihood(process, model, x.float(), steps, probes, generator)
    return nll / (images[0].numel() * LN2) + 7.0
