"""Reverse-process samplers behind one small protocol.

A sampler is told how many steps to take (``set_timesteps``), exposes the timesteps it
visits in order, and maps one model output to the previous sample with ``step``.
The sampling loop in :func:`sample` is the same for every sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from .ode import EulerSampler, HeunSampler
from .process import Denoiser, Process
from .sampler_names import MULTISTEP_SAMPLERS, ODE_SAMPLERS, ONE_STEP_SAMPLERS, SAMPLERS, VP_SAMPLERS, SamplerName

if TYPE_CHECKING:
    from .config import SampleConfig
    from .diffusion import GaussianDiffusion
    from .vdm import VDM

__all__ = ["MULTISTEP_SAMPLERS", "ODE_SAMPLERS", "ONE_STEP_SAMPLERS", "SAMPLERS", "VP_SAMPLERS", "SamplerName"]


class Sampler(Protocol):
    timesteps: list
    marginals: list[tuple[float, float]]
    """(alpha, sigma) of x_t = alpha x_0 + sigma eps at each visited time; the data, after the last one, has (1, 0)."""

    def set_timesteps(self, num_steps: int) -> None: ...

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(x_prev, predicted x_0) from the model's epsilon at step t."""
        ...


def batch_time(t: int | float, x: Tensor) -> Tensor:
    """The step of a batch: int64 for discrete steps, x's dtype for continuous times."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long if isinstance(t, int) else x.dtype)


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def predict_x0(x_t: Tensor, eps: Tensor, a_t: float, clip_denoised: bool) -> Tensor:
    """x_0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped to [-1, 1] when ``clip_denoised``."""
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return x0.clamp(-1, 1) if clip_denoised else x0


def ddim_step(
    x_t: Tensor, eps: Tensor, a_t: float, a_s: float, eta: float, clip_denoised: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One DDIM update (Song et al. 2021, eq. 12) of a variance-preserving process, from t to s < t.

    a = alpha_bar = alpha^2 = 1 - sigma^2 at each time. x_0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    (clipped to [-1, 1] with eps recomputed from it when ``clip_denoised``), and
    x_s = sqrt(a_s) x_0_hat + sqrt(1 - a_s - v) eps + sqrt(v) z, v = eta^2 (1 - a_s)/(1 - a_t) (1 - a_t/a_s).
    eta = 0 is deterministic; eta = 1 is the posterior q(x_s | x_t, x_0 = x_0_hat). Returns (x_s, x_0_hat).
    """
    x0 = predict_x0(x_t, eps, a_t, clip_denoised)
    if clip_denoised:
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    variance = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    x_s = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - variance, 0.0)) * eps
    if variance > 0:
        x_s = x_s + math.sqrt(variance) * noise_like(x_t, generator)
    return x_s, x0


class VariancePreservingSampler:
    """A sampler of a variance-preserving process, which knows alpha_bar = alpha^2 = 1 - sigma^2 at each time."""

    alpha_bars: list[float]

    @property
    def marginals(self) -> list[tuple[float, float]]:
        return [(math.sqrt(a), math.sqrt(1 - a)) for a in self.alpha_bars]


def respaced_betas(alphas_cumprod: np.ndarray, kept: list[int]) -> np.ndarray:
    """Betas of the process that visits only the steps ``kept`` (Nichol & Dhariwal 2021, sec. 4):
    beta'_i = 1 - alpha_bar_{k_i} / alpha_bar_{k_{i-1}} over the kept steps in increasing order, so
    its alpha_bar'_i equals alpha_bar_{k_i} at every kept step."""
    steps = sorted(kept)
    abar = np.asarray(alphas_cumprod, dtype=np.float64)[steps]
    return 1.0 - abar / np.append(1.0, abar[:-1])


class DDPMSampler(VariancePreservingSampler):
    """Ancestral sampling of Ho et al. 2020 (Algorithm 2) with the reverse variance of the diffusion
    (the true posterior variance beta~_t by default, or beta_t, or the learned one).

    x_{t-1} = mu~_t(x_t, x_0_hat) + sigma_t z, where x_0_hat is recovered from the predicted
    epsilon (and clipped to [-1, 1] when ``clip_denoised``), and no noise is added at the last step.
    On fewer than T steps (evenly spaced, or the given list) it samples the respaced process of
    :func:`respaced_betas`, calling the network at the original step numbers.
    """

    def __init__(self, diffusion: GaussianDiffusion, clip_denoised: bool = True):
        self.diffusion = diffusion
        self.clip_denoised = clip_denoised
        self.set_timesteps(diffusion.num_timesteps)

    def set_timesteps(self, num_steps: int | list[int]) -> None:
        total = self.diffusion.num_timesteps
        kept = visited_steps(total, num_steps)
        self.timesteps = kept
        self.alpha_bars = [float(self.diffusion.float64["alphas_cumprod"][t]) for t in kept]
        self._index = {t: i for i, t in enumerate(sorted(kept))}
        if len(kept) == total:
            self._process = self.diffusion
        else:
            d = self.diffusion
            self._process = type(d)(respaced_betas(d.float64["alphas_cumprod"], kept), d.variance, d.loss,
                                              d.vlb_weight, device=d.betas.device, dtype=d.betas.dtype)

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        i = self._index[t]
        mean, log_variance, x0 = self._process.p_mean_variance(model_output, x_t, batch_time(i, x_t), self.clip_denoised)
        if i == 0:
            return mean, x0
        return mean + (0.5 * log_variance).exp() * noise_like(x_t, generator), x0


class DDIMSampler(VariancePreservingSampler):
    """DDIM of Song et al. 2021 (eq. 12) on an evenly spaced subset of the T steps (or the given list).

    Each step is :func:`ddim_step` with a = alpha_bar at the current and the previous visited step
    (1 after the last); eta = 1 matches the ancestral sampler on the full schedule.
    """

    def __init__(self, diffusion: GaussianDiffusion, num_steps: int, eta: float = 0.0, clip_denoised: bool = True):
        self.diffusion = diffusion
        self.eta = eta
        self.clip_denoised = clip_denoised
        self.set_timesteps(num_steps)

    def set_timesteps(self, num_steps: int | list[int]) -> None:
        self.timesteps = visited_steps(self.diffusion.num_timesteps, num_steps)
        self.alpha_bars = [float(self.diffusion.float64["alphas_cumprod"][t]) for t in self.timesteps]
        self._prev = {t: p for t, p in zip(self.timesteps, self.timesteps[1:] + [-1])}

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        alphas_cumprod = self.diffusion.float64["alphas_cumprod"]
        prev = self._prev[t]
        a_prev = float(alphas_cumprod[prev]) if prev >= 0 else 1.0
        eps = self.diffusion.split_output(model_output)[0]
        return ddim_step(x_t, eps, float(alphas_cumprod[t]), a_prev, self.eta, self.clip_denoised, generator)


class VDMSampler(VariancePreservingSampler):
    """VDM's sampler on an even grid of ``num_steps`` times in [0, 1]: :func:`ddim_step` with
    a = alpha^2 = sigmoid(-gamma(t)) from the learned schedule. eta = 1 is ancestral sampling from the
    posterior q(z_s | z_t, x = x_0_hat) (Kingma et al. eq. 32); eta < 1 is DDIM-style. The last step
    returns x_0_hat, the decoder's mean (sigma_0 / alpha_0 is far below the width of a pixel level).
    """

    def __init__(self, vdm: VDM, num_steps: int, eta: float = 1.0, clip_denoised: bool = True):
        self.vdm, self.eta, self.clip_denoised = vdm, eta, clip_denoised
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


def logsnr_uniform_steps(lambdas: np.ndarray, num_steps: int) -> list[int]:
    """Indices into ``lambdas`` (log-SNR, decreasing with the index) whose values are closest to
    ``num_steps`` evenly spaced log-SNRs from the last index to the first: strictly decreasing,
    from ``len(lambdas) - 1`` to 0 (Lu et al. 2022's uniform-logSNR steps)."""
    total = len(lambdas)
    if not 1 <= num_steps <= total:
        raise ValueError(f"the number of steps must be between 1 and {total}, got {num_steps}")
    targets = np.linspace(lambdas[-1], lambdas[0], num_steps)
    chosen: list[int] = []
    for k, target in enumerate(targets):
        nearest = int(np.argmin(np.abs(lambdas - target)))
        upper = chosen[-1] - 1 if chosen else total - 1
        chosen.append(min(max(nearest, num_steps - 1 - k), upper))
    return chosen


class DPMSolverPP2M(VariancePreservingSampler):
    """DPM-Solver++(2M) of Lu et al. 2022 (Algorithm 2): the multistep second-order solver of the
    probability-flow ODE in its data-prediction form, for 10-25 steps.

    With lambda = log(alpha / sigma), h_i = lambda_{t_i} - lambda_{t_{i-1}} and D_i the predicted x_0
    (clipped when ``clip_denoised``):
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D,
        D = (1 + 1 / (2 r_i)) D_{i-1} - 1 / (2 r_i) D_{i-2},  r_i = h_{i-1} / h_i,
    first order (D = D_{i-1}) at the first step, and the final step, to sigma = 0, returns D_{i-1}. The visited times are uniform in log-SNR
    (:func:`logsnr_uniform_steps`), where the solver's error is smallest.
    ``alpha_bars[i]`` is alpha^2 at ``timesteps[i]``; ``eps_of`` takes epsilon from a model output.
    Deterministic: the generator is not used.

    ``stochastic``: SDE-DPM-Solver++(2M) (Lu et al. 2022, the solver of the reverse SDE in the same
    data-prediction form), with the same D:
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-h_i} x_{t_{i-1}} - alpha_{t_i} (e^{-2 h_i} - 1) D
                  + sigma_{t_i} sqrt(1 - e^{-2 h_i}) z.
    Its first-order step is the DDPM posterior q(x_{t_i} | x_{t_{i-1}}, x_0 = D); the fresh noise
    corrects the model's errors as ancestral sampling does, where the ODE carries them to the end.
    """

    def __init__(self, timesteps: list, alpha_bars: list[float], eps_of, clip_denoised: bool = True,
                 stochastic: bool = False):
        self.timesteps, self.eps_of, self.clip_denoised = list(timesteps), eps_of, clip_denoised
        self.stochastic = stochastic
        self.alpha_bars = list(alpha_bars)
        self._a = self.alpha_bars + [1.0]
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        self._previous: tuple[Tensor, float] | None = None

    def reset(self) -> None:
        """Forget the previous step's prediction: a new trajectory starts."""
        self._previous = None

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps != len(self.timesteps):
            raise ValueError("build a new DPMSolverPP2M for another number of steps (make_sampler)")

    def step(self, model_output: Tensor, t, x_t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        i = self._index[t]
        if i == 0:
            self._previous = None  # a new batch starts
        a_t, a_s = self._a[i], self._a[i + 1]
        x0 = predict_x0(x_t, self.eps_of(model_output), a_t, self.clip_denoised)
        if a_s >= 1.0:
            return x0, x0
        h = 0.5 * (math.log(a_s / (1 - a_s)) - math.log(a_t / (1 - a_t)))
        d = x0
        if self._previous is not None:
            previous_x0, previous_h = self._previous
            r = previous_h / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous_x0
        self._previous = (x0, h)
        if not self.stochastic:
            x_s = math.sqrt((1 - a_s) / (1 - a_t)) * x_t - math.sqrt(a_s) * math.expm1(-h) * d
            return x_s, x0
        x_s = (math.sqrt((1 - a_s) / (1 - a_t)) * math.exp(-h) * x_t - math.sqrt(a_s) * math.expm1(-2 * h) * d
               + math.sqrt((1 - a_s) * -math.expm1(-2 * h)) * noise_like(x_t, generator))
        return x_s, x0


def make_sampler(cfg: SampleConfig, process: Process, default_steps: int) -> Sampler:
    """Build the sampler named by ``sample.sampler`` on ``steps`` (``default_steps`` when null) of the process.

    ``euler`` and ``heun`` solve the process's probability-flow ODE on its :meth:`Process.time_grid` with the
    time shift ``sample.shift``; the others are the process's own (:meth:`Process.sampler`). A sampler that
    cannot draw from the process is refused, naming the ones that can."""
    name = cfg.sampler
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    if name not in process.SAMPLERS:
        raise ValueError(f"sampler '{name}' cannot draw from this model; its samplers: {', '.join(process.SAMPLERS)}")
    steps = default_steps if cfg.steps is None else cfg.steps
    if name in ODE_SAMPLERS:
        grid = process.time_grid(steps, cfg.shift)
        return (HeunSampler if name == "heun" else EulerSampler)(process, grid, cfg.clip_denoised)
    return process.sampler(cfg, steps)


def discrete_sampler(cfg: SampleConfig, diffusion: GaussianDiffusion, steps: int) -> Sampler:
    """The own samplers of a discrete-time process: ancestral (respaced when ``steps`` < T), DDIM or
    DPM-Solver++(2M) on ``steps`` of the T steps; ancestral and DDIM visit exactly ``step_list`` when given."""
    if cfg.sampler in MULTISTEP_SAMPLERS:
        alphas_cumprod = diffusion.float64["alphas_cumprod"]
        visited = logsnr_uniform_steps(0.5 * np.log(alphas_cumprod / (1 - alphas_cumprod)), steps)
        alpha_bars = [float(alphas_cumprod[t]) for t in visited]
        return DPMSolverPP2M(visited, alpha_bars, lambda out: diffusion.split_output(out)[0], cfg.clip_denoised,
                             cfg.sampler == "dpmpp_2m_sde")
    visit = list(cfg.step_list) or steps
    if cfg.sampler == "ddpm":
        sampler = DDPMSampler(diffusion, cfg.clip_denoised)
        sampler.set_timesteps(visit)
        return sampler
    if cfg.sampler == "ddim":
        return DDIMSampler(diffusion, visit, cfg.eta, cfg.clip_denoised)
    raise ValueError(f"sampler '{cfg.sampler}' is not one of the discrete-time process's own")


def vdm_sampler(cfg: SampleConfig, vdm: VDM, steps: int) -> Sampler:
    """The own samplers of VDM on ``steps`` times of its schedule: ancestral (eta = 1) or DDIM-style, or
    DPM-Solver++(2M) on times uniform in its log-SNR."""
    if cfg.sampler in MULTISTEP_SAMPLERS:
        grid = np.linspace(0.0, 1.0, 10_001)
        with torch.no_grad():
            device = vdm.gamma.gamma_0.device
            gammas = vdm.gamma(torch.tensor(grid, device=device)).double().cpu().numpy()
        visited = logsnr_uniform_steps(-gammas / 2, steps)
        times = [float(grid[i]) for i in visited]
        alpha_bars = [float(1 / (1 + np.exp(gammas[i]))) for i in visited]  # sigmoid(-gamma)
        return DPMSolverPP2M(times, alpha_bars, lambda out: out, cfg.clip_denoised, cfg.sampler == "dpmpp_2m_sde")
    if cfg.sampler in ("ddpm", "ddim"):
        return VDMSampler(vdm, steps, 1.0 if cfg.sampler == "ddpm" else cfg.eta, cfg.clip_denoised)
    raise ValueError(f"sampler '{cfg.sampler}' is not one of VDM's own")


@dataclass
class Trajectory:
    """Frames recorded during sampling: step index, x_t and predicted x_0, each [B, C, H, W]."""

    steps: list[int]
    x_t: list[Tensor]
    pred_x0: list[Tensor]


@torch.inference_mode()
def sample(
    model: Denoiser,
    sampler: Sampler,
    noise: Tensor,
    generator: torch.Generator | None = None,
    record: set[int] | None = None,
    start: int = 0,
) -> tuple[Tensor, Trajectory]:
    """Run the reverse process from ``noise`` [B, C, H, W], a draw at the sampler's visited time
    ``timesteps[start]`` (pure noise when ``start`` is 0); records frames at the step indices in ``record``."""
    x = noise
    trajectory = Trajectory([], [], [])
    if hasattr(sampler, "reset"):
        sampler.reset()
    for i, t in enumerate(sampler.timesteps[start:], start):
        x, x0 = sampler.step(model(x, batch_time(t, x)), t, x, generator)
        if record and i in record:
            trajectory.steps.append(t)
            trajectory.x_t.append(x.cpu())
            trajectory.pred_x0.append(x0.cpu())
    return x, trajectory
