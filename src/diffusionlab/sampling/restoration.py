"""Zero-shot restoration: a trained model as the prior of x given a linear measurement y = A x + sigma_y n.

Every solver runs on the process's own time grid and sees the model only through the process protocol: the
marginals (alpha_t, sigma_t) of x_t = alpha_t x_0 + sigma_t eps and the predicted (x_0, eps). Where a paper
writes its update in the variance-exploding variable x / alpha, the update here is the same one written for
x = alpha (x / alpha), so the solvers drive a variance-preserving process and a rectified flow alike. With
sig_s = sigma_s / alpha_s the noise level of the next time, y_bar = S^+ U^T y the coefficients the measurement
gives, nu_i = sigma_y / s_i their noise, and c = V^T x_0_hat, e = V^T eps_hat, z fresh noise (spectral):

- ``ddrm`` (Kawar et al. 2022, eq. 7-8): a coefficient the measurement misses takes c + sig_s (sqrt(1 - eta^2) e
  + eta z); a measured one with sig_s < nu_i takes c + sig_s (sqrt(1 - eta^2) (y_bar - c) / nu_i + eta z), and one
  with sig_s >= nu_i is drawn from N((1 - eta_b) c + eta_b y_bar, sig_s^2 - eta_b^2 nu_i^2).
- ``ddnm`` (Wang et al. 2023): the range-null space correction c <- c + lambda_i (y_bar - c) of the measured
  coefficients, then the step c + gamma_i (sqrt(1 - eta^2) e + eta z); noiseless lambda = 1, gamma = sig_s (x_0_hat
  = A^+ y + (I - A^+ A) x_0_hat); with sigma_y > 0 DDNM+'s lambda_i = min(1, sig_s / nu_i) and
  gamma_i^2 = sig_s^2 - (lambda_i nu_i)^2, so the measurement's noise is never added twice.
- ``pigdm`` (Song et al. 2023, eq. 7): the score of p(y | x_t) ~ N(A x_0_hat, r_t^2 A A^T + sigma_y^2 I),
  g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^-1 (y - A x_0_hat) with J = d x_0_hat / d x_t (one backward pass) and
  r_t^2 = sig_t^2 / (1 + sig_t^2). The paper's Algorithm 1 (``pigdm_form: paper``) adds r_t^2 g to the DDIM step
  of x / alpha: x_s += alpha_s alpha_t r_t^2 g, a correction of the same order at every step (noiseless, r_t^2 g =
  J^T A^+ (y - A x_0_hat)). ``pigdm_form: score`` adds g to the model's score instead: x_0_hat += sigma_t^2 /
  alpha_t g (Tweedie's formula), eps_hat -= sigma_t g, whose weight vanishes as sigma_t does.
- ``dps`` (Chung et al. 2023, Algorithm 1): a DDIM step (eta = 1: ancestral), then x_s -= zeta grad_{x_t}
  ||y - A x_0_hat(x_t)|| per image (the step size zeta / ||y - A x_0_hat|| on the squared norm).
- ``repaint`` (Lugmayr et al. 2022): :func:`diffusionlab.sampling.inverse.inpaint`, for masks only.

Baselines: ``pinv`` (A^+ y) and, for a mask, ``fill`` (the known pixels, the unknown ones harmonic: the mean of
their neighbours, the discrete Laplace equation solved by Jacobi iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.process import Denoiser, Process, SamplerOptions
from ..core.updates import DATA, batch_time, ddim_update, eps_from, noise_like
from ..tensors import ImageGenerators
from .base import Sampler, prior_draw
from .inverse import inpaint
from .operators import MaskOperator, Operator
from .samplers import make_sampler

BASELINES = ("pinv", "fill")
GRADIENT_SOLVERS = ("pigdm", "dps")
"""Solvers that backpropagate through the network at every step."""
FILL_ITERATIONS = 200


@dataclass(frozen=True)
class SolverOptions:
    """What a solver is run with: its name, its steps, eta (``ddrm`` and ``ddnm``: the share of fresh noise in each
    step; ``pigdm`` and ``dps``: DDIM's eta, 1 ancestral), ``eta_b`` (``ddrm``), the step size ``zeta`` (``dps``),
    the resamplings per step (``repaint``) and whether x_0_hat is clipped to [-1, 1]."""

    solver: str
    steps: int
    eta: float = 0.85
    eta_b: float = 1.0
    zeta: float = 1.0
    resample: int = 5
    clip_denoised: bool = True
    pigdm_form: str = "score"
    """``score``: PiGDM's g added to the score; ``paper``: its correction alpha_s alpha_t r_t^2 g after the DDIM step."""


@dataclass
class Problem:
    """A measurement ``y`` of images under ``operator`` with noise ``sigma_y``."""

    operator: Operator
    y: Tensor
    sigma_y: float


def baseline(name: str, problem: Problem) -> Tensor:
    """The pseudo-inverse A^+ y (``pinv``) or, for a mask, the known pixels with a harmonic fill (``fill``)."""
    op, y = problem.operator, problem.y
    if name == "pinv":
        return op.pinv(y)
    if name == "fill":
        if not isinstance(op, MaskOperator):
            raise ValueError("the fill baseline needs a mask (inpainting or denoising)")
        return harmonic_fill(y, op.mask)
    raise ValueError(f"unknown baseline {name!r}: one of {', '.join(BASELINES)}")


def harmonic_fill(y: Tensor, mask: Tensor) -> Tensor:
    """Known pixels (``mask`` 1) of ``y`` kept, each unknown one the mean of its 4 neighbours (reflected at the
    edges) after :data:`FILL_ITERATIONS` Jacobi sweeps from the known pixels' mean."""
    known = mask.expand_as(y)
    mean = (y * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(min=1)
    x = torch.where(known > 0, y, mean)
    for _ in range(FILL_ITERATIONS):
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        neighbours = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 4
        x = torch.where(known > 0, y, neighbours)
    return x


def _spectral_step(options: SolverOptions, c: Tensor, e: Tensor, ybar: Tensor, nu: Tensor, measured: Tensor,
                   sig: float, z: Tensor) -> Tensor:
    """The next x / alpha in spectral coefficients, for ``ddrm`` and ``ddnm`` (module docstring)."""
    eta = options.eta
    keep = math.sqrt(1 - eta**2)
    missing = c + sig * (keep * e + eta * z)
    if options.solver == "ddrm":
        safe_nu = torch.where(nu > 0, nu, torch.ones_like(nu))
        noisy = c + sig * (keep * (ybar - c) / safe_nu + eta * z)
        variance = (sig**2 - options.eta_b**2 * nu**2).clamp(min=0)
        settled = options.eta_b * ybar + (1 - options.eta_b) * c + variance.sqrt() * z
        return torch.where(measured, torch.where(sig < nu, noisy, settled), missing)
    if options.solver == "ddnm":
        lam = torch.where(sig >= nu, torch.ones_like(nu), sig / torch.where(nu > 0, nu, torch.ones_like(nu)))
        corrected = c + lam * (ybar - c)
        gamma = (sig**2 - (lam * nu) ** 2).clamp(min=0).sqrt()
        return torch.where(measured, corrected + gamma * (keep * e + eta * z), missing)
    raise ValueError(f"{options.solver!r} is not a spectral solver: ddrm or ddnm")


def _guidance(options: SolverOptions, problem: Problem, x0: Tensor, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """The gradient a gradient solver adds, with respect to x_t: PiGDM's score g, or DPS's grad ||y - A x_0_hat||."""
    op, y = problem.operator, problem.y
    if options.solver == "pigdm":
        r2, s = pigdm_r2(alpha, sigma), op.singulars
        weight = torch.where(op.measured, s / (r2 * s**2 + problem.sigma_y**2).clamp(min=1e-30), 0.0)
        v = op.V(weight * op.Ut(y - op.A(x0)))
        return torch.autograd.grad(x0, x, v.detach())[0]
    if options.solver == "dps":
        norm = (y - op.A(x0)).flatten(1).norm(dim=1)
        return torch.autograd.grad(norm.sum(), x)[0]
    raise ValueError(f"{options.solver!r} is not a gradient solver: pigdm or dps")


def pigdm_r2(alpha: float, sigma: float) -> float:
    """PiGDM's r_t^2 = sig_t^2 / (1 + sig_t^2), sig_t = sigma_t / alpha_t: the variance it gives x_0 given x_t (of
    data of unit variance); 1 where alpha_t = 0."""
    if alpha <= 0:
        return 1.0
    sig2 = (sigma / alpha) ** 2
    return sig2 / (1 + sig2)


def repaint_sampler(process: Process, steps: int, clip_denoised: bool = True) -> Sampler:
    """RePaint's one-step sampler: the family's ancestral ``ddpm`` where it has one, else ``euler``."""
    name = "ddpm" if "ddpm" in process.SAMPLERS else "euler"
    return make_sampler(SamplerOptions(sampler=name, steps=steps, clip_denoised=clip_denoised), process, steps)


def solve(model: Denoiser, process: Process, options: SolverOptions, problem: Problem,
          generators: ImageGenerators | torch.Generator | None) -> Tensor:
    """Restorations [B, C, H, W] (model range) of ``problem``'s measurement by ``options.solver``, started from noise
    drawn from ``generators`` (one per image: each restoration depends on its own seed alone)."""
    op, y = problem.operator, problem.y
    if options.solver == "repaint":
        if not isinstance(op, MaskOperator):
            raise ValueError("repaint restores masked pixels only (inpainting or denoising)")
        with torch.inference_mode():
            sampler = repaint_sampler(process, options.steps, options.clip_denoised)
            return inpaint(model, sampler, y, op.mask, generators, options.resample).clone()
    x = prior_draw(process, noise_like(torch.empty((y.shape[0], *op.image_shape), device=y.device, dtype=y.dtype),
                                       generators))
    grid = process.time_grid(options.steps)
    marginals = [*zip(grid.alphas, grid.sigmas), DATA]
    ybar = op.spectral_measurement(y)
    measured = op.measured
    nu = torch.where(measured, problem.sigma_y / torch.where(measured, op.singulars, torch.ones_like(op.singulars)),
                     torch.full_like(op.singulars, math.inf))
    for i, t in enumerate(grid.times):
        at_t, at_s = marginals[i], marginals[i + 1]
        if options.solver in GRADIENT_SOLVERS:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0, _ = process.x0_eps(model(x_in, batch_time(t, x_in)), x_in, *at_t)
                grad = _guidance(options, problem, x0, x_in, *at_t)
            x0 = x0.detach()
            eps = eps_from(x, x0, *at_t)
            if options.solver == "pigdm" and options.pigdm_form == "score" and at_t[0] > 0:
                x0 = x0 + at_t[1] ** 2 / at_t[0] * grad
                eps = eps - at_t[1] * grad
            if options.clip_denoised:
                x0 = x0.clamp(-1, 1)
                eps = eps_from(x, x0, *at_t)
            with torch.no_grad():
                x = ddim_update(x0, eps, at_t, at_s, options.eta, generators)
            if options.solver == "pigdm" and options.pigdm_form == "paper":
                x = x + at_s[0] * at_t[0] * pigdm_r2(*at_t) * grad
            if options.solver == "dps":
                x = x - options.zeta * grad
            continue
        with torch.no_grad():
            x0, _ = process.x0_eps(model(x, batch_time(t, x)), x, *at_t)
            if options.clip_denoised:
                x0 = x0.clamp(-1, 1)
            eps = eps_from(x, x0, *at_t)
            sig = at_s[1] / at_s[0]
            step = _spectral_step(options, op.Vt(x0), op.Vt(eps), ybar, nu, measured, sig, noise_like(x, generators))
            x = at_s[0] * op.V(step)
    return x.detach()

