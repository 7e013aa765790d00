"""VDM: the schedule gamma(t), the continuous-time bound against a known NLL, sampling, and the
variance-minimising gradient of the schedule."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusionlab.config.sampling import SampleConfig
from diffusionlab.core.likelihood import BIN_HALF_WIDTH
from diffusionlab.families.vdm.gamma import make_gamma
from diffusionlab.families.vdm.process import VDM, alpha_sigma
from diffusionlab.families.vdm.samplers import VDMSampler
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.samplers import make_sampler

MU, S = 0.1, 0.3
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1
BIN_LOGP = torch.from_numpy(np.log(np.diff(stats.norm.cdf(
    np.concatenate([[-np.inf], GRID[:-1].numpy() + BIN_HALF_WIDTH, [np.inf]]), MU, S))))


def optimal_eps(vdm: VDM):
    """E[eps | z_t] for data on the 8-bit grid with the quantised Gaussian's bin probabilities:
    the exact posterior over the 256 values is a softmax, so the Bayes-optimal denoiser is closed form."""

    def eps(z, network_time):
        g = vdm.gamma.gamma_min + network_time / 1000 * (vdm.gamma.gamma_max - vdm.gamma.gamma_min)
        alpha, sigma = alpha_sigma(g.double())
        alpha, sigma = alpha.reshape(-1, 1), sigma.reshape(-1, 1)
        flat = z.reshape(z.shape[0], -1, 1).double()
        logits = BIN_LOGP - 0.5 * ((flat - alpha[:, :, None] * GRID) / sigma[:, :, None]) ** 2
        x0 = (logits.softmax(-1) * GRID).sum(-1)
        return ((flat[..., 0] - alpha * x0) / sigma).reshape(z.shape)

    return eps


@pytest.fixture(scope="module")
def data():
    idx = torch.multinomial(BIN_LOGP.exp(), 1500, replacement=True, generator=torch.Generator().manual_seed(0))
    return GRID[idx].reshape(-1, 1, 1, 1), -BIN_LOGP[idx] / math.log(2)


@pytest.mark.parametrize("kind", ["fixed", "scalar", "network"])
def test_gamma_is_monotone_with_the_right_endpoints_for_any_parameters(kind):
    torch.manual_seed(0)
    gamma = make_gamma(kind, -13.3, 5.0).double()
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    for trial in range(5):
        if trial:
            with torch.no_grad():
                for p in gamma.parameters():
                    p.copy_(torch.randn_like(p) * 3)
        g, dg, s, _ = gamma.gamma_and_derivative(t)
        assert (torch.diff(g) >= -1e-9).all() and (dg >= 0).all()
        assert g[0].item() == pytest.approx(gamma.gamma_0.item(), abs=1e-6)
        assert g[-1].item() == pytest.approx(gamma.gamma_1.item(), abs=1e-6)
        fd = (gamma(t[2:]) - gamma(t[:-2])) / (t[2] - t[0])
        assert torch.allclose(dg[1:-1], fd, rtol=2e-3, atol=1e-3 * abs(g[-1] - g[0]).item())


def test_fixed_gamma_has_no_parameters_and_scalar_learns_only_its_endpoints():
    assert list(make_gamma("fixed", -13.3, 5.0).parameters()) == []
    scalar = make_gamma("scalar", -13.3, 5.0)
    assert len(list(scalar.parameters())) == 2 and scalar.interior_parameters() == []
    assert scalar.gamma_1.item() == pytest.approx(5.0, abs=1e-5)
    assert len(make_gamma("network", -13.3, 5.0).interior_parameters()) == 4


def test_prior_term_is_near_zero_when_gamma_1_is_large(data):
    x, _ = data
    terms = lambda g1: VDM(make_gamma("fixed", -13.3, g1)).double().loss_terms(
        lambda z, t: torch.zeros_like(z), x, torch.full((len(x),), 0.5, dtype=torch.float64),
        torch.zeros_like(x), torch.zeros_like(x))["prior"]
    assert terms(12.0).max() < 1e-5
    assert terms(0.0).mean() > 0.1


@pytest.mark.parametrize("kind", ["fixed", "network"])
def test_continuous_bound_with_the_optimal_denoiser_is_the_true_nll(data, kind):
    x, true_bits = data
    torch.manual_seed(1)
    vdm = VDM(make_gamma(kind, -13.3, 8.0)).double()
    terms = vdm.nll_terms(optimal_eps(vdm), x, t_draws=64, generator=torch.Generator().manual_seed(2))
    diff = terms["total"] - true_bits
    mean, err = diff.mean().item(), diff.std().item() / math.sqrt(len(diff))
    assert abs(mean) < 3 * err + 0.02, f"bound - true NLL = {mean:.4f} ± {err:.4f} bits/dim"
    assert terms["prior"].mean() < 1e-3 and terms["reconstruction"].mean() < 0.1


def test_variance_gradient_of_the_interior_is_that_of_the_squared_diffusion_loss():
    torch.manual_seed(0)
    vdm = VDM(make_gamma("network", -13.3, 5.0)).double()
    net = torch.nn.Conv2d(1, 1, 1).double()
    denoise = lambda z, t: net(z) * (1 + t.reshape(-1, 1, 1, 1) / 1000)
    x = torch.rand(16, 1, 2, 2, dtype=torch.float64) * 2 - 1
    t, eps, eps_0 = torch.rand(16, dtype=torch.float64), torch.randn_like(x), torch.randn_like(x)
    interior = vdm.gamma.interior_parameters()
    terms = vdm.loss_terms(denoise, x, t, eps, eps_0, variance_gradient=True)
    terms["loss"].mean().backward()
    hooked = [p.grad.clone() for p in interior]
    endpoint = vdm.gamma.gamma_0_param.grad.clone()
    vdm.zero_grad()
    net.zero_grad()
    plain = vdm.loss_terms(denoise, x, t, eps, eps_0)
    expected = torch.autograd.grad((plain["diffusion"] ** 2).mean(), interior, retain_graph=True)
    for got, want in zip(hooked, expected):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-12)
    (want_endpoint,) = torch.autograd.grad(plain["loss"].mean(), vdm.gamma.gamma_0_param)
    assert torch.allclose(endpoint, want_endpoint)


def test_ancestral_sampling_from_the_optimal_denoiser_recovers_the_data_distribution():
    vdm = VDM(make_gamma("fixed", -13.3, 8.0)).double()
    sampler = VDMSampler(vdm, num_steps=200, eta=1.0, clip_denoised=False)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 1, 1, 1, generator=gen, dtype=torch.float64)
    x, _ = sample(vdm.denoiser(optimal_eps(vdm)), sampler, noise, gen)
    assert x.mean().item() == pytest.approx(MU, abs=0.015)
    assert x.std().item() == pytest.approx(S, rel=0.03)


def test_antithetic_times_cover_the_unit_interval_evenly():
    t = VDM.antithetic_times(8, torch.device("cpu"), torch.Generator().manual_seed(0))
    gaps = torch.diff(torch.sort(t).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6) and ((t >= 0) & (t < 1)).all()


def test_held_out_bits_per_dim_feeds_the_network_as_training_does(data):
    """The evaluate stage's path (uint8 images in, the network itself handed over) gives the same bound."""
    from diffusionlab.evaluation.likelihoods import bits_per_dim

    x, true_bits = data
    vdm = VDM(make_gamma("fixed", -13.3, 8.0)).double()
    images = torch.round((x + 1) * 127.5).to(torch.uint8).numpy()
    net = lambda z, time: optimal_eps(vdm)(z.double(), time)
    got = bits_per_dim(vdm, net, images, t_draws=32, batch_size=500, device=torch.device("cpu"), seed=0)
    assert got["bpd"] == pytest.approx(true_bits.mean().item(), abs=3 * got["bpd_stderr"] + 0.02)


def test_dpm_solver_pp_2m_on_the_learned_schedule_recovers_the_data_distribution_in_20_steps():
    vdm = VDM(make_gamma("network", -13.3, 8.0)).double()
    sampler = make_sampler(SampleConfig(sampler="dpmpp_2m", steps=20, clip_denoised=False), vdm, 1000)
    assert len(sampler.timesteps) == 20 and sampler.timesteps[0] == 1.0 and sampler.timesteps[-1] == 0.0
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = sample(vdm.denoiser(optimal_eps(vdm)), sampler, noise)
    assert x.mean().item() == pytest.approx(MU, abs=0.015)
    assert x.std().item() == pytest.approx(S, rel=0.04)


def test_the_karras_grid_of_vdm_follows_equation_5_on_its_log_snr_range():
    """The levels sigma / alpha = e^(gamma / 2) of the Karras grid (rho = 7) between e^(gamma_min / 2) and
    e^(gamma_max / 2), each within the resolution of the 10,001-point grid of times."""
    from diffusionlab.core.process import karras_taus

    vdm = VDM(make_gamma("fixed", -13.3, 5.0)).double()
    grid = vdm.karras_grid(12, 7.0)
    assert grid.times[0] == 1.0 and grid.times[-1] == 0.0
    taus = [s / a for a, s in zip(grid.alphas, grid.sigmas)]
    wanted = karras_taus(12, math.exp(-13.3 / 2), math.exp(5.0 / 2), 7.0)
    step = 18.3 / 2 / 10_000  # the fine grid's spacing in log tau
    assert np.allclose(np.log(taus), np.log(wanted), atol=step)
