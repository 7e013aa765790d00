"""The variational bounds against a known likelihood.

Data: a Gaussian N(MU, S^2) quantised to the 8-bit grid on [-1, 1]; its exact NLL is known. With
the Bayes-optimal denoiser (closed form for Gaussian data) each family's bound must come out close
to that NLL, and never below it beyond the Monte-Carlo error.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusionlab.core.likelihood import BIN_HALF_WIDTH
from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.schedules import cosine_betas, linear_betas

MU, S = 0.1, 0.3


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 1, 1, generator=gen, dtype=torch.float64) * S + MU
    x = (torch.round((x + 1) * 127.5) / 127.5 - 1).clamp(-1, 1)
    v = x.flatten().numpy()
    true_bits = -np.log(stats.norm.cdf(v + BIN_HALF_WIDTH, MU, S) - stats.norm.cdf(v - BIN_HALF_WIDTH, MU, S)) / math.log(2)
    return x, torch.from_numpy(true_bits)


def optimal_discrete_model(d: GaussianDiffusion):
    """E[eps | x_t] and, for a learned variance, the exact reverse variance beta~_t + c1_t^2 Var(x_0 | x_t)."""
    f = {k: torch.as_tensor(v) for k, v in d.float64.items()}

    def model(x, t):
        def at(a):
            return a[t].reshape(-1, *([1] * (x.ndim - 1)))

        a = at(f["alphas_cumprod"])
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)
        if d.variance != "learned_range":
            return eps
        var_x0 = S**2 * (1 - a) / (a * S**2 + 1 - a)
        target = torch.log(at(f["posterior_variance"]) + at(f["posterior_mean_coef1"]) ** 2 * var_x0)
        lo, hi = at(f["posterior_log_variance_clipped"]), at(f["log_betas"])
        frac = ((target - lo) / (hi - lo)).clamp(0, 1)
        return torch.cat([eps, (2 * frac - 1).expand_as(x)], dim=1)

    return model


def discrete_bound(d: GaussianDiffusion, x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Every term of the bound, summed over all T steps, per image, in bits/dim."""
    gen = torch.Generator().manual_seed(seed)
    model = optimal_discrete_model(d)
    total = d.prior_bpd(x)
    for step in range(d.num_timesteps):
        t = torch.full((x.shape[0],), step)
        x_t = d.q_sample(x, t, torch.randn(x.shape, generator=gen, dtype=torch.float64))
        total = total + d.vb_terms_bpd(model(x_t, t), x, x_t, t)
    return total


def gap(bound: torch.Tensor, true_bits: torch.Tensor) -> tuple[float, float]:
    diff = bound - true_bits
    return diff.mean().item(), diff.std().item() / math.sqrt(len(diff))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_bound_with_the_optimal_reverse_process_is_the_true_nll(data, schedule):
    x, true_bits = data
    betas = linear_betas(1000) if schedule == "linear" else cosine_betas(1000)
    d = GaussianDiffusion(betas, variance="learned_range", loss="hybrid", dtype=torch.float64)
    mean, err = gap(discrete_bound(d, x), true_bits)
    assert abs(mean) < 3 * err + 0.03, f"bound - true NLL = {mean:.4f} ± {err:.4f} bits/dim"


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_discrete_bound_with_a_fixed_variance_is_never_below_the_true_nll(data, variance):
    x, true_bits = data
    d = GaussianDiffusion(linear_betas(1000), variance=variance, dtype=torch.float64)
    mean, err = gap(discrete_bound(d, x), true_bits)
    assert mean > -3 * err, f"bound - true NLL = {mean:.4f} ± {err:.4f} bits/dim"
    if variance == "fixed_small":  # beta~_t is below the true reverse variance when S < 1: a looser bound
        assert mean > 3 * err, f"bound - true NLL = {mean:.4f} ± {err:.4f} bits/dim"


def test_prior_term_vanishes_at_the_end_of_the_schedule(data):
    x, _ = data
    assert GaussianDiffusion(linear_betas(1000), dtype=torch.float64).prior_bpd(x).max() < 1e-4
    short = GaussianDiffusion(linear_betas(1000)[:50], dtype=torch.float64)  # stops far from noise
    assert short.prior_bpd(x).mean() > 0.1


def test_sampled_estimate_of_the_bound_is_unbiased(data):
    """nll_terms samples t; its mean must match the full sum over every t."""
    x, _ = data
    d = GaussianDiffusion(cosine_betas(100), variance="learned_range", loss="hybrid", dtype=torch.float64)
    full = discrete_bound(d, x)
    est = d.nll_terms(optimal_discrete_model(d), x, t_draws=4, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(est["total"], est["prior"] + est["reconstruction"] + est["diffusion"])
    mean, err = gap(est["total"], full)
    assert abs(mean) < 3 * err, f"sampled - full bound = {mean:.4f} ± {err:.4f} bits/dim"
