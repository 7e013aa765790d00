import math

import numpy as np
import pytest
import torch

from diffusionlab.config.sampling import SampleConfig
from diffusionlab.core.process import logsnr_uniform_steps
from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.samplers import DDIMSampler, DDPMSampler, respaced_betas
from diffusionlab.families.ddpm.schedules import cosine_betas, linear_betas
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.samplers import make_sampler

MU, STD = 0.4, 0.3


def gaussian_oracle(diffusion: GaussianDiffusion):
    """The exact E[eps | x_t] when the data are N(MU, STD^2): a denoiser with a known optimum."""
    abar = torch.as_tensor(diffusion.float64["alphas_cumprod"])

    def eps(x, t):
        a = abar[t].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)

    return eps


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(1000) if request.param == "linear" else cosine_betas(1000)
    return GaussianDiffusion(betas, dtype=torch.float64)


def propagate_gaussian(diffusion, sampler, eta):
    """Mean and variance of the sampler's output for N(MU, STD^2) data, by exact scalar recursion.

    With the exact denoiser every update is affine in x_t plus independent noise, so the output
    is Gaussian and its moments follow from the coefficients alone.
    """
    abar = diffusion.float64["alphas_cumprod"]
    mean, var = 0.0, 1.0
    steps = sampler.timesteps
    for t, prev in zip(steps, steps[1:] + [-1]):
        a = abar[t]
        v = a * STD**2 + 1 - a
        k = STD**2 * math.sqrt(a) / v  # x0_hat = MU + k (x_t - sqrt(a) MU)
        x0_mean = MU + k * (mean - math.sqrt(a) * MU)
        eps_coef, eps_mean = math.sqrt(1 - a) / v, (mean - math.sqrt(a) * x0_mean) / math.sqrt(1 - a)
        a_p = abar[prev] if prev >= 0 else 1.0
        if isinstance(sampler, DDPMSampler):  # possibly respaced: its own process, indexed by position
            process, i = sampler.respaced.float64, len(steps) - 1 - steps.index(t)
            c1, c2 = process["posterior_mean_coef1"][i], process["posterior_mean_coef2"][i]
            noise_var = process["posterior_variance"][i] if i > 0 else 0.0
            coef, mean = c1 * k + c2, c1 * x0_mean + c2 * mean
        else:
            noise_var = eta**2 * (1 - a_p) / (1 - a) * (1 - a / a_p)
            root = math.sqrt(1 - a_p - noise_var)
            coef, mean = math.sqrt(a_p) * k + root * eps_coef, math.sqrt(a_p) * x0_mean + root * eps_mean
        var = coef**2 * var + noise_var
    return mean, var


@pytest.mark.parametrize("sampler_name,steps,eta", [("ddpm", None, 0.0), ("ddim", 1000, 0.0)])
def test_full_length_samplers_recover_gaussian_data_from_its_exact_denoiser(diffusion, sampler_name, steps, eta):
    sampler = make_sampler(SampleConfig(sampler=sampler_name, steps=steps, eta=eta, clip_denoised=False), diffusion, 1000)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 1, 1, 1, generator=gen, dtype=torch.float64)
    x, _ = sample(gaussian_oracle(diffusion), sampler, noise, gen)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.02)


@pytest.mark.parametrize("sampler_name,steps,eta", [("ddpm", None, 0.0), ("ddpm", 100, 0.0), ("ddpm", 25, 0.0),
                                                    ("ddim", 50, 0.0), ("ddim", 20, 1.0), ("ddim", 10, 0.5)])
def test_samplers_match_the_exact_moments_of_their_updates(diffusion, sampler_name, steps, eta):
    """Few-step DDIM shrinks the variance (Cauchy-Schwarz on its affine update); the code must match that exactly."""
    sampler = make_sampler(SampleConfig(sampler=sampler_name, steps=steps, eta=eta, clip_denoised=False), diffusion, 1000)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(40_000, 1, 1, 1, generator=gen, dtype=torch.float64)
    x, _ = sample(gaussian_oracle(diffusion), sampler, noise, gen)
    mean, var = propagate_gaussian(diffusion, sampler, eta)
    assert x.mean().item() == pytest.approx(mean, abs=0.006)
    assert x.std().item() == pytest.approx(math.sqrt(var), rel=0.015)
    if sampler_name == "ddim" and steps < 1000:
        assert math.sqrt(var) < STD


def test_ddim_step_matches_song_et_al_equation_12(diffusion):
    sampler = DDIMSampler(diffusion, num_steps=10, eta=0.5, clip_denoised=False)
    t, prev = sampler.timesteps[3], sampler.timesteps[4]
    a_t, a_prev = diffusion.float64["alphas_cumprod"][t], diffusion.float64["alphas_cumprod"][prev]
    x_t = torch.tensor([[[[0.8]]]], dtype=torch.float64)
    eps = torch.tensor([[[[-0.25]]]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).item()
    x_prev, x0 = sampler.update(eps, 3, x_t, gen)
    x0_expected = (0.8 - math.sqrt(1 - a_t) * -0.25) / math.sqrt(a_t)
    sigma = 0.5 * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    expected = math.sqrt(a_prev) * x0_expected + math.sqrt(1 - a_prev - sigma**2) * -0.25 + sigma * z
    assert x0.item() == pytest.approx(x0_expected, rel=1e-12)
    assert x_prev.item() == pytest.approx(expected, rel=1e-12)


def test_ddim_with_eta_one_on_the_full_schedule_is_the_ancestral_sampler(diffusion):
    ddim = DDIMSampler(diffusion, num_steps=1000, eta=1.0)
    ddpm = DDPMSampler(diffusion, 1000)
    assert ddim.timesteps == ddpm.timesteps
    x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for t in (999, 500, 10, 1, 0):
        a, a0 = ddim.update(eps, 999 - t, x_t, torch.Generator().manual_seed(t))
        b, b0 = ddpm.update(eps, 999 - t, x_t, torch.Generator().manual_seed(t))
        assert torch.allclose(a, b, atol=1e-9), t
        assert torch.allclose(a0, b0)


def test_ddim_is_deterministic_with_eta_zero_and_ends_at_step_zero(diffusion):
    sampler = DDIMSampler(diffusion, num_steps=25)
    assert sampler.timesteps[0] == 999 and sampler.timesteps[-1] == 0 and len(sampler.timesteps) == 25
    assert sampler.timesteps == sorted(sampler.timesteps, reverse=True)
    noise = torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = gaussian_oracle(diffusion)
    a, _ = sample(model, sampler, noise, torch.Generator().manual_seed(1))
    b, _ = sample(model, sampler, noise, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_sampling_records_the_requested_frames(diffusion):
    sampler = DDIMSampler(diffusion, num_steps=10)
    noise = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    x, traj = sample(gaussian_oracle(diffusion), sampler, noise, record={0, 4, 9})
    assert traj.steps == [sampler.timesteps[i] for i in (0, 4, 9)]
    assert torch.equal(traj.x_t[-1], x)


def test_respaced_betas_reproduce_alpha_bar_at_the_kept_steps(diffusion):
    kept = [999, 700, 420, 100, 37, 5, 0]
    betas = respaced_betas(diffusion.float64["alphas_cumprod"], kept)
    assert np.allclose(np.cumprod(1 - betas), diffusion.float64["alphas_cumprod"][sorted(kept)], rtol=1e-12)
    sampler = DDPMSampler(diffusion, kept, clip_denoised=False)
    assert sampler.timesteps == kept and sampler.respaced.num_timesteps == 7


def test_ancestral_sampler_on_all_steps_is_the_unrespaced_one(diffusion):
    sampler = make_sampler(SampleConfig(sampler="ddpm", steps=1000), diffusion, 1000)
    assert sampler.respaced is diffusion and sampler.timesteps == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="between 1 and T = 1000"):
        make_sampler(SampleConfig(sampler="ddpm", steps=1001), diffusion, 1000)


def test_ddim_refuses_more_steps_than_the_model():
    d = GaussianDiffusion(linear_betas(30))
    with pytest.raises(ValueError, match="between 1 and T = 30"):
        DDIMSampler(d, num_steps=31)
    assert np.array_equal(DDIMSampler(d, num_steps=30).timesteps, list(range(29, -1, -1)))


def test_dpm_solver_pp_2m_ends_at_the_data_distribution_in_few_steps_where_ddim_cannot(diffusion):
    """With the exact denoiser of N(MU, STD^2) data the probability-flow ODE is the quantile map
    x_0 = MU + STD (x_T - sqrt(a_T) MU) / sqrt(a_T STD^2 + 1 - a_T). DPM-Solver++(2M) on uniform-logSNR
    steps ends within a few percent of its spread at 10 and 20 steps; DDIM shrinks it by 10-40%."""
    noise = torch.randn(2_000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T = float(diffusion.float64["alphas_cumprod"][-1])
    exact = MU + STD * (noise - math.sqrt(a_T) * MU) / math.sqrt(a_T * STD**2 + 1 - a_T)
    for steps in (10, 20):
        spread = {}
        for name in ("ddim", "dpmpp_2m"):
            sampler = make_sampler(SampleConfig(sampler=name, steps=steps, clip_denoised=False), diffusion, 1000)
            x, _ = sample(gaussian_oracle(diffusion), sampler, noise)
            spread[name] = abs(x.std() / exact.std() - 1).item()
            assert abs(x.mean() - exact.mean()).item() < 0.01 * STD
        assert spread["dpmpp_2m"] < 0.04 and spread["dpmpp_2m"] < spread["ddim"] / 3, (steps, spread)


def test_logsnr_uniform_steps_are_strictly_decreasing_and_exactly_as_many_as_asked():
    lambdas = np.linspace(5, -5, 1000) ** 3  # steep at both ends: nearest indices collide
    for n in (1, 2, 10, 200, 1000):
        steps = logsnr_uniform_steps(lambdas, n)
        assert len(steps) == n and steps[0] == 999 and all(a > b for a, b in zip(steps, steps[1:]))
        assert n == 1 or steps[-1] == 0


def test_dpm_solver_pp_2m_is_deterministic_and_restarts_for_every_batch(diffusion):
    sampler = make_sampler(SampleConfig(sampler="dpmpp_2m", steps=15), diffusion, 1000)
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first, _ = sample(gaussian_oracle(diffusion), sampler, noise)
    again, _ = sample(gaussian_oracle(diffusion), sampler, noise)
    assert torch.equal(first, again)
    assert sampler.timesteps[0] == 999 and sampler.timesteps[-1] == 0 and len(sampler.timesteps) == 15


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_explicit_step_lists_are_visited_exactly(diffusion, name):
    steps = (999, 700, 300, 50, 0)
    sampler = make_sampler(SampleConfig(sampler=name, steps=None, step_list=steps), diffusion, 1000)
    assert sampler.timesteps == list(steps)
    assert sampler.grid.alphas == [math.sqrt(float(diffusion.float64["alphas_cumprod"][t])) for t in steps]
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sample(model, sampler, torch.randn(2, 1, 2, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert calls == list(steps)


def test_first_step_of_sde_dpm_solver_pp_is_the_ddpm_posterior(diffusion):
    """SDE-DPM-Solver++ at first order: x_s ~ q(x_s | x_t, x_0 = D), whose mean and variance are
    sqrt(a_s) b / (1 - a_t) x_0 + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t and (1 - a_s) / (1 - a_t) b,
    b = 1 - a_t / a_s (Ho et al. 2020, eq. 7, between the two visited steps)."""
    sampler = make_sampler(SampleConfig(sampler="dpmpp_2m_sde", steps=10, clip_denoised=False), diffusion, 1000)
    t, s = sampler.timesteps[:2]
    a_t, a_s = (float(diffusion.float64["alphas_cumprod"][k]) for k in (t, s))
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    first: list[torch.Tensor] = []
    sampler(lambda x, time: eps, x_t, torch.Generator().manual_seed(7),
            callback=lambda i, time, x, x0: first.extend([x, x0]) if i == 0 else None)
    x_s, x0 = first
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    b = 1 - a_t / a_s
    assert torch.allclose(x0, (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t))
    mean = math.sqrt(a_s) * b / (1 - a_t) * x0 + math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x_t
    assert torch.allclose(x_s, mean + math.sqrt((1 - a_s) / (1 - a_t) * b) * z, atol=1e-12)


def test_sde_dpm_solver_pp_2m_recovers_gaussian_data_in_20_steps_and_follows_its_seed(diffusion):
    """With the exact denoiser of N(MU, STD^2) data, 20 steps of SDE-DPM-Solver++(2M) end within 6% of
    that spread, where 20 respaced ancestral steps (its first-order form on evenly spaced steps) shrink
    it by a fifth or more; the noise it injects comes from the generator alone."""
    sampler = make_sampler(SampleConfig(sampler="dpmpp_2m_sde", steps=20, clip_denoised=False), diffusion, 1000)
    noise = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = sample(gaussian_oracle(diffusion), sampler, noise, torch.Generator().manual_seed(1))
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.06)
    ancestral = make_sampler(SampleConfig(sampler="ddpm", steps=20, clip_denoised=False), diffusion, 1000)
    assert sample(gaussian_oracle(diffusion), ancestral, noise, torch.Generator().manual_seed(1))[0].std() < 0.85 * STD
    again, _ = sample(gaussian_oracle(diffusion), sampler, noise, torch.Generator().manual_seed(1))
    other, _ = sample(gaussian_oracle(diffusion), sampler, noise, torch.Generator().manual_seed(2))
    assert torch.equal(x, again) and not torch.allclose(x, other)


def test_ancestral_sampling_respaced_to_one_step_returns_the_predicted_x0(diffusion):
    """One respaced step goes from the noisiest step straight to the data: its beta' = 1 - alpha_bar_{T-1} makes the
    posterior mean x_0_hat itself, and no noise is added at the last step."""
    sampler = make_sampler(SampleConfig(sampler="ddpm", steps=1, clip_denoised=False), diffusion, 1000)
    assert sampler.timesteps == [999] and sampler.respaced.num_timesteps == 1
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = gaussian_oracle(diffusion)
    x, _ = sample(model, sampler, noise, torch.Generator().manual_seed(1))
    a = float(diffusion.float64["alphas_cumprod"][999])
    x0 = (noise - math.sqrt(1 - a) * model(noise, torch.tensor([999]))) / math.sqrt(a)
    torch.testing.assert_close(x, x0)


def test_the_karras_grid_of_a_discrete_process_is_the_nearest_steps_to_equation_5(diffusion):
    """k-diffusion's "Karras" schedules on a beta table: each step is the one whose sigma / alpha is nearest to its
    level of the rho = 7 grid between the table's ends, or the next one down where two levels share a step (the
    cosine table is sparse at its noisy end)."""
    from diffusionlab.core.process import karras_taus

    grid = diffusion.karras_grid(10, 7.0)
    assert grid.times[0] == 999 and grid.times[-1] == 0 and grid.times == sorted(set(grid.times), reverse=True)
    abar = diffusion.float64["alphas_cumprod"]
    log_taus = 0.5 * np.log((1 - abar) / abar)
    wanted = np.log(karras_taus(10, float(np.exp(log_taus[0])), float(np.exp(log_taus[-1])), 7.0))
    for k, (t, target) in enumerate(zip(grid.times, wanted)):
        nearest = int(np.argmin(np.abs(log_taus - target)))
        assert t == nearest or (k > 0 and t == grid.times[k - 1] - 1 and nearest >= t), (k, t, nearest)
    sampler = make_sampler(SampleConfig(sampler="dpmpp_2m", steps=10, grid="karras"), diffusion, 1000)
    assert sampler.timesteps == grid.times


def test_dpm_solver_on_the_karras_grid_converges_to_gaussian_data(diffusion):
    """With the exact denoiser of N(MU, STD^2): the spread's error falls by more than half from 10 to 50 levels."""
    noise = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (10, 50):
        sampler = make_sampler(SampleConfig(sampler="dpmpp_2m", steps=steps, grid="karras", clip_denoised=False),
                               diffusion, 1000)
        x, _ = sample(gaussian_oracle(diffusion), sampler, noise)
        assert x.mean().item() == pytest.approx(MU, abs=0.01)
        errors.append(abs(x.std().item() - STD))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.02, errors
