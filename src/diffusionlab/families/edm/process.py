"""``edm``: the variance-exploding process of Karras et al. 2022 (EDM) with its preconditioned denoiser.

x_sigma = x_0 + sigma eps (alpha = 1): the process's time is the noise level sigma itself. The network F is
wrapped as the denoiser (eq. 7 and Table 1)

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),  c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),
    c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),  c_in = 1 / sqrt(sigma^2 + sigma_d^2),  c_noise = ln(sigma) / 4,

so that F's input and target have unit variance at every noise level. Training draws ln(sigma) ~ N(P_mean, P_std^2)
and minimises lambda(sigma) ||D(x_0 + sigma eps; sigma) - x_0||^2 with lambda = (sigma^2 + sigma_d^2) /
(sigma sigma_d)^2, the weight that makes F's loss unit-weighted. Sampling starts from N(0, sigma_max^2 I) and runs
down the grid sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (eq. 5) to the
data; its probability-flow ODE is dx/dsigma = (x - D(x; sigma)) / sigma = eps_hat, the ODE of every other family in
the EDM variables. The protocol's denoiser returns eps_hat = sigma / (sigma^2 + sigma_d^2) x - c_out / sigma F,
written so that nothing cancels at small sigma.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...core.process import Denoiser, ProcessDefaults, SamplerOptions, TimeGrid, karras_taus
from ...distributed import Shard, global_rows
from ...sampling.names import EDM_SAMPLERS
from .params import EDMParams

NETWORK_TIME_SCALE = 1000.0
"""The network sees 1000 c_noise = 250 ln(sigma), on the scale of the other families' times."""
DATA_CHUNK = 4096


class EDM(ProcessDefaults, nn.Module):
    """The EDM process; its one buffer is sigma_data, measured on the training data when not given."""

    SAMPLERS = EDM_SAMPLERS

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float | None = 0.5,
                 p_mean: float = -1.2, p_std: float = 1.2, rho: float = 7.0):
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_min, self.sigma_max, self.p_mean, self.p_std, self.rho = sigma_min, sigma_max, p_mean, p_std, rho
        self.measured = sigma_data is None
        self.register_buffer("sigma_data", torch.tensor(math.nan if sigma_data is None else sigma_data,
                                                        dtype=torch.float64))

    @property
    def prior_sigma(self) -> float:
        return self.sigma_max

    @property
    def sd(self) -> float:
        """sigma_data as a number."""
        sd = float(self.sigma_data)
        if not math.isfinite(sd):
            raise ValueError("sigma_data is not set: it is measured on the training data (fit_data) or given")
        return sd

    def fit_data(self, images: Tensor) -> None:
        """sigma_data = the standard deviation of the training data in the model range (uint8 pixels mapped to
        [-1, 1], or latents as they are), when the params left it null."""
        if not self.measured:
            return
        total, total_sq, count = 0.0, 0.0, 0
        for start in range(0, len(images), DATA_CHUNK):
            chunk = images[start:start + DATA_CHUNK]
            x = chunk.double() / 127.5 - 1 if chunk.dtype == torch.uint8 else chunk.double()
            total, total_sq, count = total + x.sum().item(), total_sq + (x * x).sum().item(), count + x.numel()
        mean = total / count
        self.sigma_data.fill_(math.sqrt(max(total_sq / count - mean * mean, 0.0)))

    def out_channels(self, channels: int) -> int:
        return channels

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) = (1, sigma): the time is the noise level."""
        return torch.ones_like(t), t

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) at noise levels ``sigma`` (Karras et al. Table 1)."""
        sd2 = self.sd**2
        root = (sigma**2 + sd2).sqrt()
        return sd2 / (sigma**2 + sd2), sigma * self.sd / root, 1 / root

    @staticmethod
    def network_time(sigma: Tensor) -> Tensor:
        """What the network is told of the noise level: 1000 c_noise, c_noise = ln(sigma) / 4."""
        return NETWORK_TIME_SCALE * sigma.log() / 4

    def _network(self, net: Denoiser, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(F(c_in x, c_noise), c_skip, c_out, sigma), the coefficients shaped to broadcast against x."""
        s = sigma.double().reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in = self.preconditioning(s)
        f = net(c_in.to(x.dtype) * x, self.network_time(sigma.double()).to(x.dtype))
        return f, c_skip, c_out, s

    def denoise(self, net: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) for x [B, ...] and sigma [B]."""
        f, c_skip, c_out, _ = self._network(net, x, sigma)
        return c_skip.to(x.dtype) * x + c_out.to(x.dtype) * f

    def denoiser(self, net: Denoiser) -> Denoiser:
        """The network as (x, sigma) -> eps_hat = (x - D(x; sigma)) / sigma = (1 - c_skip) / sigma x - c_out / sigma F,
        with (1 - c_skip) / sigma = sigma / (sigma^2 + sigma_d^2)."""

        def eps(x: Tensor, sigma: Tensor) -> Tensor:
            f, _, c_out, s = self._network(net, x, sigma)
            return (s / (s**2 + self.sd**2)).to(x.dtype) * x - (c_out / s).to(x.dtype) * f

        return eps

    def weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2."""
        return (sigma**2 + self.sd**2) / (sigma * self.sd) ** 2

    def training_losses(self, net: Denoiser, x0: Tensor, sigma: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """Per-example ``loss`` = lambda(sigma) ``mse`` [B], ``mse`` the mean over pixels of (D - x_0)^2."""
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        d = self.denoise(net, x0 + s * eps, sigma)
        mse = (d.float() - x0.float()).pow(2).flatten(1).mean(1)
        return {"loss": self.weight(sigma.double()).float() * mse, "mse": mse}

    def losses_for_batch(self, net: Denoiser, x0: Tensor, generator: torch.Generator | None,
                         shard: Shard | None = None) -> dict[str, Tensor]:
        """Training terms for a batch (with a ``shard``: this process's rows of the global batch's sigma and eps)."""
        n, rows = global_rows(x0.shape[0], shard)
        normal = torch.randn(n, device=x0.device, generator=generator)
        eps = torch.randn((n, *x0.shape[1:]), device=x0.device, generator=generator)
        sigma = (self.p_mean + self.p_std * normal).exp()
        return self.training_losses(net, x0, sigma[rows], eps[rows])

    def scalars(self) -> dict[str, float]:
        return {"sigma_data": float(self.sigma_data)}

    def time_label(self, t: float) -> str:
        return f"sigma={t:.3g}"

    def _grid(self, sigmas: list[float]) -> TimeGrid:
        return TimeGrid(list(sigmas), [1.0] * len(sigmas), list(sigmas))

    def time_grid(self, steps: int, shift: float = 1.0) -> TimeGrid:
        """The Karras grid of ``steps`` levels (eq. 5), then the data at sigma = 0."""
        return self._grid(karras_taus(steps, self.sigma_min, self.sigma_max, self.rho, shift))

    def logsnr_grid(self, steps: int) -> TimeGrid:
        """``steps`` levels evenly spaced in log sigma (the log-SNR is -2 ln sigma) from sigma_max to sigma_min."""
        if steps < 1:
            raise ValueError(f"a sampler needs at least one step, got {steps}")
        hi, lo = math.log(self.sigma_max), math.log(self.sigma_min)
        return self._grid([math.exp(hi + (lo - hi) * i / max(steps - 1, 1)) for i in range(steps)])

    def karras_grid(self, steps: int, rho: float) -> TimeGrid:
        """The family's own grid with exponent ``rho``."""
        return self._grid(karras_taus(steps, self.sigma_min, self.sigma_max, rho))

    def likelihood_grid(self, steps: int) -> TimeGrid:
        return self._grid(karras_taus(steps + 1, self.sigma_min, self.sigma_max, self.rho))

    def sampler(self, options: SamplerOptions, steps: int):
        raise ValueError(f"the edm family samples with {', '.join(EDM_SAMPLERS)}, not '{options.sampler}'")

    def x0_eps(self, output: Tensor, x_t: Tensor, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
        return x_t - sigma * output, output

    def ode_variables(self, alpha: float, sigma: float) -> tuple[float, float]:
        """The ODE in x itself and sigma: dx/dsigma = eps_hat."""
        return 1.0, sigma

    def ode_derivative(self, x0: Tensor, eps: Tensor) -> Tensor:
        return eps

    def time_of_sigma(self, sigma: float) -> float:
        """The process time at noise level ``sigma`` (Heun's churn evaluates the network between grid levels)."""
        return sigma


def build(m: EDMParams, device: torch.device | str = "cpu") -> EDM:
    return EDM(m.sigma_min, m.sigma_max, m.sigma_data, m.p_mean, m.p_std, m.rho).to(device)
