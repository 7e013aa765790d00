"""The adaptive noise schedule of Kingma & Gao 2023 (sec. 5, app. F): log-SNR levels lambda drawn by
importance from a running estimate of where the weighted loss lies.

The weighted loss is an integral over lambda in [lambda_min, lambda_max] of

    f(lambda) = 0.5 w(lambda) E_{x, eps} ||eps - eps_hat(z_lambda; lambda)||^2,

estimated without bias by f(lambda) / p(lambda) for lambda ~ p. The estimator's variance is lowest for
p close to f, so p is a histogram over ``bins`` equal bins of lambda whose heights follow an
exponential moving average of the f seen in each bin (starting from the first value seen there, and
uniform until every bin has been seen), mixed with a share of the uniform density so that
every level keeps being visited. Draws are stratified: the batch takes the inverse CDF at
(u + i / B) mod 1 for one u ~ U(0, 1), as VDM's antithetic times do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdaptiveLogSNR(nn.Module):
    """A piecewise-constant density over lambda, adapted to the loss; its state is saved with the process."""

    def __init__(self, lambda_min: float, lambda_max: float, bins: int = 100, decay: float = 0.99,
                 uniform_share: float = 0.05):
        super().__init__()
        if not lambda_min < lambda_max:
            raise ValueError(f"lambda_min ({lambda_min}) must be below lambda_max ({lambda_max})")
        self.lambda_min, self.lambda_max, self.decay, self.uniform_share = lambda_min, lambda_max, decay, uniform_share
        self.register_buffer("heights", torch.ones(bins, dtype=torch.float64))
        self.register_buffer("visited", torch.zeros(bins, dtype=torch.bool))

    @property
    def bins(self) -> int:
        return self.heights.numel()

    @property
    def width(self) -> float:
        return (self.lambda_max - self.lambda_min) / self.bins

    def probabilities(self) -> Tensor:
        """The probability of each bin [bins]: uniform until every bin has been visited."""
        if not self.visited.all():
            return torch.full_like(self.heights, 1.0 / self.bins)
        p = self.heights / self.heights.sum()
        return (1 - self.uniform_share) * p + self.uniform_share / self.bins

    def density(self, lam: Tensor) -> Tensor:
        """p(lambda) per unit of lambda, for lambda [B] in the range."""
        index = ((lam.double() - self.lambda_min) / self.width).floor().long().clamp(0, self.bins - 1)
        return (self.probabilities()[index] / self.width).to(lam.dtype)

    def sample(self, n: int, device: torch.device, generator: torch.Generator | None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(lambda [n], p(lambda) [n]) by the inverse CDF at n stratified uniforms."""
        u = torch.rand((), device=device, generator=generator, dtype=torch.float64)
        u = torch.remainder(u + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)
        p = self.probabilities().to(device)
        cdf = torch.cumsum(p, 0)
        index = torch.searchsorted(cdf, u, right=True).clamp(max=self.bins - 1)
        below = cdf[index] - p[index]
        within = ((u - below) / p[index]).clamp(0.0, 1.0)
        lam = self.lambda_min + (index.double() + within) * self.width
        return lam.to(dtype), (p[index] / self.width).to(dtype)

    @torch.no_grad()
    def update(self, lam: Tensor, values: Tensor) -> None:
        """Move each visited bin's height towards the mean of the f(lambda) seen in it."""
        index = ((lam.double() - self.lambda_min) / self.width).floor().long().clamp(0, self.bins - 1)
        index = index.to(self.heights.device)
        values = values.detach().double().to(self.heights.device)
        sums = torch.zeros_like(self.heights).index_add_(0, index, values)
        counts = torch.zeros_like(self.heights).index_add_(0, index, torch.ones_like(values))
        seen = counts > 0
        means = (sums[seen] / counts[seen]).clamp(min=1e-12)
        first = ~self.visited[seen]  # a bin starts at its first mean, not at an arbitrary height
        self.heights[seen] = torch.where(first, means, self.decay * self.heights[seen] + (1 - self.decay) * means)
        self.visited |= seen
