"""The ``euler`` and ``heun`` samplers: the probability-flow ODE of any family.

Every process writes x_t = alpha_t x_0 + sigma_t eps and gives the ODE in variables of its own
(:meth:`Process.ode_variables`): a state y = x / c and a time tau in which dy/dtau = f(x_0_hat, eps_hat).

- The diffusion families use the EDM formulation of Karras et al. 2022: c = alpha, tau = sigma / alpha and
  f = eps_hat (dy/dtau = (y - D(y)) / tau). An Euler step is then exactly deterministic DDIM.
- The flow family uses its own straight path: c = 1, tau = t and f = eps_hat - x_0_hat, the velocity
  (Lipman et al. 2022; the Euler sampler of Esser et al. 2024).

Heun's method (Karras et al., Algorithm 1) corrects each step with the slope at its end, except the last
step, to the data, which is an Euler step: N steps take 2N - 1 network evaluations.
"""


from __future__ import annotations

import torch
from torch import Tensor

from ..core.process import Process, TimeGrid


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

    @property
    def steps(self) -> int:
        return len(self.grid)

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps != len(self.grid):
            raise ValueError("build a new ODE sampler for another number of steps (make_sampler)")

    def slope(self, model_output: Tensor, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dy/dtau, predicted x_0) at grid time i from the model's output at x."""
        alpha, sigma = self.grid.alphas[i], self.grid.sigmas[i]
        x0, eps = self.process.x0_eps(model_output, x, alpha, sigma)
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


