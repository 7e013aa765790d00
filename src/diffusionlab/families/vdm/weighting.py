"""Weighted diffusion losses over the log-SNR (Kingma & Gao 2023, "Understanding Diffusion Objectives
as the ELBO with Simple Data Augmentation").

With lambda = log(alpha^2 / sigma^2) the log-SNR, every common diffusion objective is

    L_w(x) = 0.5 E_{t ~ U(0, 1), eps} [ w(lambda_t) (-dlambda/dt) ||eps - eps_hat(z_t; lambda_t)||^2 ]

for a weighting w(lambda); w = 1 is the continuous-time ELBO of Kingma et al. 2021. The integral is the
same for any schedule between the same end points, so the estimator may draw lambda from any density
p(lambda) and divide by it. When w decreases with lambda (more weight on noisier levels), L_w equals a
weighted average of ELBOs of Gaussian-perturbed data z_s: with w normalised to 1 at the noisiest level,

    L_w = w(lambda_max) L(0) + int_0^1 (d/ds w(lambda_s)) L(s) ds,   L(s) = the diffusion term of the ELBO of z_s,

so a monotonic weighting keeps the model a likelihood model of slightly noised data. The weightings
here are all monotonic, written as functions of lambda and normalised so that w(lambda_min) = 1:

- ``elbo``: w = 1;
- ``sigmoid``: w = sigmoid(b - lambda) (the paper's sigmoid weighting with bias b);
- ``v``: w = exp(-lambda / 2), what v-prediction with the cosine schedule (and rectified flow) optimise;
- ``edm``: the EDM objective of Karras et al. 2022 (log-normal noise levels, P_mean = -1.2, P_std = 1.2,
  sigma_data = 0.5), w = N(lambda; 2.4, 2.4^2) (e^-lambda + 0.25) / 0.25, made monotonic by holding its
  peak value at every noisier level (the paper's "EDM, monotonic").
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

WeightingName = Literal["elbo", "sigmoid", "v", "edm"]
WEIGHTINGS: tuple[str, ...] = get_args(WeightingName)

EDM_MEAN, EDM_STD, EDM_SIGMA_DATA = 2.4, 2.4, 0.5
"""EDM's log-normal sigma (P_mean -1.2, P_std 1.2) as a density over lambda = -2 log sigma, and its sigma_data."""


def _edm_log_weight(lam: Tensor) -> Tensor:
    """log of N(lambda; 2.4, 2.4^2) (e^-lambda + sigma_data^2) / sigma_data^2, up to a constant."""
    s2 = EDM_SIGMA_DATA**2
    return -0.5 * ((lam - EDM_MEAN) / EDM_STD) ** 2 + torch.logaddexp(-lam, torch.full_like(lam, math.log(s2))) - math.log(s2)


def _edm_peak() -> float:
    """The lambda where EDM's weight peaks: the root of d/dlambda log w = -(lambda - 2.4) / 2.4^2 - e^-lambda / (e^-lambda + 0.25),
    which decreases in lambda, found by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        slope = -(mid - EDM_MEAN) / EDM_STD**2 - 1.0 / (1.0 + EDM_SIGMA_DATA**2 * math.exp(mid))
        lo, hi = (mid, hi) if slope > 0 else (lo, mid)
    return 0.5 * (lo + hi)


EDM_PEAK = _edm_peak()


def log_weight(name: WeightingName, lam: Tensor, bias: float = 0.0) -> Tensor:
    """log w(lambda), unnormalised."""
    if name == "elbo":
        return torch.zeros_like(lam)
    if name == "sigmoid":
        return torch.nn.functional.logsigmoid(bias - lam)
    if name == "v":
        return -0.5 * lam
    if name == "edm":
        return _edm_log_weight(torch.clamp(lam, min=EDM_PEAK))
    raise ValueError(f"unknown weighting '{name}'; known: {', '.join(WEIGHTINGS)}")


class Weighting:
    """w(lambda) / w(lambda_min) on [lambda_min, lambda_max]: 1 at the noisiest level, decreasing from there."""

    def __init__(self, name: WeightingName, lambda_min: float, bias: float = 0.0):
        if name not in WEIGHTINGS:
            raise ValueError(f"unknown weighting '{name}'; known: {', '.join(WEIGHTINGS)}")
        self.name, self.lambda_min, self.bias = name, float(lambda_min), float(bias)
        self._log_norm = float(log_weight(name, torch.tensor(self.lambda_min, dtype=torch.float64), bias))

    @property
    def is_elbo(self) -> bool:
        return self.name == "elbo"

    def __call__(self, lam: Tensor) -> Tensor:
        if self.is_elbo:
            return torch.ones_like(lam)
        return (log_weight(self.name, lam, self.bias) - self._log_norm).exp()
