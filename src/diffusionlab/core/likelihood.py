"""Log-likelihood building blocks: Gaussian KL, discretised decoders and bits-per-dimension.

Images are 8-bit data scaled to [-1, 1]: 256 bins of width 2/255 centred on the pixel values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_BINS = 256
BIN_HALF_WIDTH = 1.0 / (NUM_BINS - 1)
LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_prob_between(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (uses Phi(b) - Phi(a) = Phi(-a) - Phi(-b))."""
    upper = a > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-12))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of 8-bit data x in [-1, 1] under N(means, exp(log_scales)^2) discretised into 256 bins.

    The bin of value x is [x - 1/255, x + 1/255]; the first and last bins extend to -inf and +inf
    (Ho et al. 2020, section 3.3). Elementwise, in nats.
    """
    inv_std = torch.exp(-log_scales)
    lower = (x - means - BIN_HALF_WIDTH) * inv_std
    upper = (x - means + BIN_HALF_WIDTH) * inv_std
    inner = _log_prob_between(lower, upper)
    return torch.where(
        x < -1 + BIN_HALF_WIDTH, torch.special.log_ndtr(upper),
        torch.where(x > 1 - BIN_HALF_WIDTH, torch.special.log_ndtr(-lower), inner),
    )


def at_least_fp32(x: Tensor) -> Tensor:
    """Half and bfloat16 values promoted to float32 for reductions; float32 and float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def sum_flat(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: [B, ...] -> [B]."""
    return x.sum(dim=tuple(range(1, x.ndim)))


def nats_to_bits_per_dim(nats: Tensor, dims: int) -> Tensor:
    """A negative log-likelihood of an image of ``dims`` values, in nats, as bits per dimension."""
    return nats / (dims * LN2)
