"""The probability-flow ODE solvers and the ODE likelihood on the diffusion families, against closed forms."""

import math

import numpy as np
import pytest
import torch

from diffusionlab.config.sampling import SampleConfig
from diffusionlab.core.ode import ode_log_likelihood
from diffusionlab.core.process import shifted_grid, time_shift
from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.samplers import DDIMSampler
from diffusionlab.families.ddpm.schedules import cosine_betas, linear_betas
from diffusionlab.families.vdm.gamma import make_gamma
from diffusionlab.families.flow.process import RectifiedFlow
from diffusionlab.families.vdm.process import VDM
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.inverse import inpaint
from diffusionlab.sampling.samplers import make_sampler

from gaussian_data import DIMS, SHAPE, affine_map, draw, exact_model, gaussian, log_density


def sampler_of(process, name, steps, shift=1.0, clip=False):
    return make_sampler(SampleConfig(sampler=name, steps=steps, shift=shift, clip_denoised=clip), process, steps)


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(1000) if request.param == "linear" else cosine_betas(1000)
    return GaussianDiffusion(betas, dtype=torch.float64)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_time_shift_maps_the_unit_interval_onto_itself_increasing(shift):
    u = np.linspace(0, 1, 101)
    t = np.array([time_shift(v, shift) for v in u])
    assert t[0] == 0 and t[-1] == 1 and (np.diff(t) > 0).all()
    assert ((t >= u - 1e-12) if shift >= 1 else (t <= u + 1e-12)).all()
    assert time_shift(0.5, 3.0) == pytest.approx(0.75)  # s u / (1 + (s - 1) u)
    if shift == 1.0:
        assert np.allclose(t, u)


def test_shifted_grids_start_at_the_noise_and_decrease():
    assert shifted_grid(4, 1.0, include_zero=False) == [1.0, 0.75, 0.5, 0.25]
    assert shifted_grid(3, 1.0, include_zero=True) == [1.0, 0.5, 0.0]
    shifted = shifted_grid(4, 3.0, include_zero=False)
    assert shifted[0] == 1.0 and all(a > b for a, b in zip(shifted, shifted[1:])) and shifted[1] > 0.75


def assert_same_samples(process, first, second, tol):
    """Both samplers visit the same times and, with the exact denoiser of Gaussian data, end at the same images."""
    assert first.timesteps == second.timesteps
    mu, cov = gaussian()
    model = exact_model(process, mu, cov)
    noise = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(sample(model, first, noise)[0], sample(model, second, noise)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("clip", [False, True])
def test_euler_on_a_discrete_process_is_deterministic_ddim(diffusion, clip):
    euler = sampler_of(diffusion, "euler", 20, clip=clip)
    ddim = DDIMSampler(diffusion, 20, 0.0, clip)
    assert_same_samples(diffusion, euler, ddim, 1e-10)


def test_euler_on_vdm_is_its_deterministic_sampler():
    vdm = VDM(make_gamma("fixed", -10.0, 6.0)).double()
    euler = sampler_of(vdm, "euler", 15)
    own = make_sampler(SampleConfig(sampler="ddim", steps=15, eta=0.0, clip_denoised=False), vdm, 15)
    assert_same_samples(vdm, euler, own, 1e-9)


def test_heun_takes_two_evaluations_per_step_but_the_last():
    diffusion = GaussianDiffusion(linear_betas(1000), dtype=torch.float64)
    calls = []
    mu, cov = gaussian()
    exact = exact_model(diffusion, mu, cov)

    def model(x, t):
        calls.append(int(t[0]))
        return exact(x, t)

    heun = sampler_of(diffusion, "heun", 10)
    sample(model, heun, torch.zeros(2, *SHAPE, dtype=torch.float64))
    assert len(calls) == 19 == heun.evaluations
    grid = diffusion.time_grid(10).times
    assert calls == [grid[0], *(t for t in grid[1:] for _ in range(2))]
    sample(model, heun, torch.zeros(2, *SHAPE, dtype=torch.float64))  # a second trajectory restarts cleanly
    assert len(calls) == 38


@pytest.mark.parametrize("family", ["ddpm", "flow"])
def test_heun_started_mid_grid_is_the_tail_of_the_full_trajectory(family):
    """A sampler keeps nothing between steps: started at step k from the state a full trajectory had there, Heun
    takes the same steps and ends at the same images."""
    process = GaussianDiffusion(linear_betas(1000), dtype=torch.float64) if family == "ddpm" else RectifiedFlow()
    mu, cov = gaussian()
    model = exact_model(process, mu, cov)
    heun = sampler_of(process, "heun", 8)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = {}
    full = heun(model, noise, callback=lambda i, t, x, x0: states.__setitem__(i, x))
    for k in (1, 4, 7):
        assert torch.equal(heun(model, states[k - 1], start=k), full), k
    with pytest.raises(ValueError, match="start must index the sampler's 8 steps"):
        heun(model, noise, start=8)


def moment_error(process, name, steps, mu, cov, noisiest):
    """Largest error of the mean and covariance that ``steps`` of the sampler give the data, starting from
    the process's exact marginal at its noisiest time (not N(0, I))."""
    alpha, sigma = (float(v) for v in process.marginal(noisiest))
    start_cov = alpha**2 * cov + sigma**2 * torch.eye(DIMS, dtype=torch.float64)
    m, b = affine_map(sampler_of(process, name, steps), exact_model(process, mu, cov))
    return float((m @ (alpha * mu) + b - mu).abs().max() + (m @ start_cov @ m.T - cov).abs().max())


@pytest.mark.parametrize("family", ["ddpm", "vdm"])
def test_euler_converges_at_first_order_and_heun_at_second_to_the_data_distribution(family):
    """EDM-form ODE steps with the exact denoiser of N(mu, Sigma) data: halving the step halves Euler's
    error of the data's moments and quarters Heun's."""
    if family == "ddpm":
        process, noisiest = GaussianDiffusion(linear_betas(1000), dtype=torch.float64), torch.tensor([999])
    else:
        process, noisiest = VDM(make_gamma("fixed", -13.3, 5.0)).double(), torch.tensor([1.0], dtype=torch.float64)
    mu, cov = gaussian()
    euler = [moment_error(process, "euler", n, mu, cov, noisiest) for n in (40, 80)]
    heun = [moment_error(process, "heun", n, mu, cov, noisiest) for n in (20, 40)]
    assert 1.6 < euler[0] / euler[1] < 2.4, euler
    assert 3.2 < heun[0] / heun[1] < 6.0, heun
    assert heun[1] < 3e-3 and euler[1] < 2e-2


def test_inpainting_refuses_heun_which_carries_its_prediction_between_calls():
    diffusion = GaussianDiffusion(linear_betas(100), dtype=torch.float64)
    with pytest.raises(ValueError, match="only a sampler whose step needs the current output alone"):
        inpaint(lambda x, t: x, sampler_of(diffusion, "heun", 5), torch.zeros(1, *SHAPE), torch.ones(1, *SHAPE))


def test_inpainting_with_euler_keeps_the_known_pixels(diffusion):
    mu, cov = gaussian()
    image = draw(3, mu, cov)
    mask = torch.zeros_like(image)
    mask[..., :2] = 1
    out = inpaint(exact_model(diffusion, mu, cov), sampler_of(diffusion, "euler", 10), image, mask,
                  torch.Generator().manual_seed(0), resample=2)
    assert torch.equal(out[..., :2], image[..., :2]) and out[..., 2:].isfinite().all()


@pytest.mark.parametrize("probes", [1, 8])
def test_ode_likelihood_of_a_discrete_process_is_the_exact_density(probes):
    """With the exact field, log p(x) through the ODE is the density of x_t at the cleanest step: the data's
    marginal N(alpha_0 mu, alpha_0^2 Sigma + sigma_0^2 I) there, within the Hutchinson estimator's error."""
    diffusion = GaussianDiffusion(linear_betas(1000), dtype=torch.float64)
    mu, cov = gaussian()
    x = draw(64, mu, cov, seed=3)
    estimate = ode_log_likelihood(diffusion, exact_model(diffusion, mu, cov), x, 100, probes,
                                  torch.Generator().manual_seed(0))
    alpha, sigma = (float(v) for v in diffusion.marginal(torch.tensor([0])))
    truth = log_density(x, alpha * mu, alpha**2 * cov + sigma**2 * torch.eye(DIMS, dtype=torch.float64))
    diff = estimate - truth
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 3 * stderr + 0.02, (diff.mean(), stderr)
    assert stderr < 0.5 / probes**0.5  # one probe is already a usable estimate


def test_the_ode_likelihood_dequantises_in_the_bins_of_the_training_levels(monkeypatch):
    """Level k is the bin of width 2/255 centred on k / 127.5 - 1, where training and the bound put it; its
    volume gives the log2 127.5 bits/dim added to -log2 p."""
    from diffusionlab.core import ode
    from diffusionlab.tensors import to_model_range

    seen = []

    def density_one(process, model, x, steps, probes, generator):
        seen.append(x)
        return torch.zeros(x.shape[0], dtype=torch.float64)

    monkeypatch.setattr(ode, "ode_log_likelihood", density_one)
    images = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8).repeat(50, 1, 1, 1)
    bits = ode.ode_bits_per_dim(None, None, images, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bits, torch.full_like(bits, math.log2(127.5)))
    offset = seen[0].double() - to_model_range(images).double()
    assert offset.abs().max() <= 1 / 255 + 1e-7 and offset.abs().max() > 0.99 / 255
    assert abs(offset.mean().item()) < 1e-4  # centred
