import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusionlab.core.likelihood import discretized_gaussian_log_likelihood, nats_to_bits_per_dim, normal_kl


def test_normal_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("mean,scale", [(0.1, 0.05), (-0.9, 0.01), (0.95, 0.3), (0.0, 1e-3)])
def test_discretized_gaussian_matches_numeric_integration_of_each_bin(mean, scale):
    values = torch.tensor([-1.0, -1 + 2 / 255, -0.5, mean, 0.2, 1 - 2 / 255, 1.0], dtype=torch.float64)
    values = (torch.round((values + 1) * 127.5) / 127.5 - 1).clamp(-1, 1)  # on the 8-bit grid
    got = discretized_gaussian_log_likelihood(values, torch.full_like(values, mean),
                                              torch.full_like(values, math.log(scale)))
    for x, logp in zip(values.tolist(), got.tolist()):
        lo = -np.inf if x < -0.999 else x - 1 / 255
        hi = np.inf if x > 0.999 else x + 1 / 255
        mass = stats.norm.cdf(hi, mean, scale) - stats.norm.cdf(lo, mean, scale)
        if mass > 1e-300:
            quad = integrate.quad(lambda v: stats.norm.pdf(v, mean, scale), max(lo, mean - 40 * scale),
                                  min(hi, mean + 40 * scale), epsabs=1e-14, points=[mean] if lo < mean < hi else None)[0]
            assert logp == pytest.approx(math.log(mass), rel=1e-6, abs=1e-9)
            if quad > 1e-200:
                assert logp == pytest.approx(math.log(quad), rel=1e-5, abs=1e-7)


def test_discretized_gaussian_probabilities_sum_to_one_over_all_bins():
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, scale in [(0.3, 0.1), (-1.2, 0.5), (0.0, 0.002)]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, math.log(scale)))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_is_finite_far_in_the_tails():
    x = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, torch.tensor([0.9, -0.9, 0.9], dtype=torch.float64),
                                               torch.full((3,), math.log(1e-3), dtype=torch.float64))
    assert torch.isfinite(logp).all() and (logp < -100).all()


def test_bits_per_dim_by_hand():
    # An image of 4 values with total NLL 8 ln 2 nats: 8 bits over 4 dimensions = 2 bits/dim.
    assert nats_to_bits_per_dim(torch.tensor(8 * math.log(2)), 4).item() == pytest.approx(2.0)
