"""The flow family (rectified flow, Esser et al. 2024): its path, its samplers and its likelihood, in closed form."""

import copy
import math

import pytest
import torch
import yaml

from diffusionlab.config.params import parse_params
from diffusionlab.config.sampling import SampleConfig
from diffusionlab.core.ode import ode_log_likelihood
from diffusionlab.core.process import time_shift
from diffusionlab.errors import ConfigError
from diffusionlab.families.flow.params import FlowParams
from diffusionlab.families.flow.process import RectifiedFlow
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.sampling.inverse import ddim_invert, inpaint
from diffusionlab.sampling.samplers import make_sampler

from gaussian_data import SHAPE, affine_map, draw, exact_model, gaussian, log_density
from test_guidance import assert_guidance_steers, net  # noqa: F401  (net: the fixture)
from test_training import ROOT, TINY_NET

CPU = torch.device("cpu")


def flow_sampler(name, steps, shift=1.0, clip=False, flow=None, **options):
    cfg = SampleConfig(sampler=name, steps=steps, shift=shift, clip_denoised=clip, **options)
    return make_sampler(cfg, flow or RectifiedFlow(), steps)


def test_the_path_target_and_conversions_are_the_closed_forms():
    flow = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, *SHAPE, generator=g), torch.randn(6, *SHAPE, generator=g)
    t = torch.rand(6, generator=g)
    b = t.reshape(-1, 1, 1, 1)
    x_t = (1 - b) * x0 + b * eps
    alpha, sigma = flow.marginal(t)
    assert torch.equal(alpha, 1 - t) and torch.equal(sigma, t)
    for i in range(6):  # x_0 = x_t - t v and eps = x_t + (1 - t) v for the true velocity v = eps - x_0
        got_x0, got_eps = flow.x0_eps((eps - x0)[i:i + 1], x_t[i:i + 1], 1 - t[i].item(), t[i].item())
        torch.testing.assert_close(got_x0, x0[i:i + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(got_eps, eps[i:i + 1], atol=1e-6, rtol=0)
    seen = {}

    def constant(x, time):
        seen["x"], seen["time"] = x, time
        return torch.full_like(x, 0.5)

    terms = flow.training_losses(constant, x0, t, eps)
    torch.testing.assert_close(seen["x"], x_t)
    torch.testing.assert_close(seen["time"], 1000 * t)  # the network sees t on [0, 1000]
    torch.testing.assert_close(terms["loss"], ((0.5 - (eps - x0)) ** 2).flatten(1).mean(1))


def test_training_times_are_logit_normal_with_the_given_location_and_scale_or_uniform():
    g = torch.Generator().manual_seed(0)
    t = RectifiedFlow("logit_normal", 0.5, 0.8).sample_times(200_000, CPU, g)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01) and logit.std().item() == pytest.approx(0.8, abs=0.01)
    u = RectifiedFlow("uniform").sample_times(200_000, CPU, g)
    assert u.min() >= 0 and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.005)
    with pytest.raises(ValueError, match="logit_std"):
        FlowParams(logit_std=0.0)


def test_the_sampler_grid_is_the_shifted_uniform_grid_from_pure_noise():
    sampler = flow_sampler("euler", 4, shift=3.0)
    assert sampler.timesteps == pytest.approx([time_shift(u, 3.0) for u in (1.0, 0.75, 0.5, 0.25)])
    assert sampler.marginals[0] == (0.0, 1.0)  # t = 1 is pure noise, as the sampler's start is


def moment_error(name, steps, shift=1.0):
    mu, cov = gaussian()
    m, b = affine_map(flow_sampler(name, steps, shift), exact_model(RectifiedFlow(), mu, cov))
    return float((b - mu).abs().max() + (m @ m.T - cov).abs().max())  # x_1 ~ N(0, I) exactly


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_converges_at_first_order_and_heun_at_second_to_the_data_distribution(shift):
    """With the exact velocity of N(mu, Sigma) data, x_1 ~ N(0, I) is carried to N(mu, Sigma): halving the
    step halves Euler's error of the moments and quarters Heun's, with or without the time shift."""
    euler = [moment_error("euler", n, shift) for n in (40, 80, 160)]
    heun = [moment_error("heun", n, shift) for n in (20, 40, 80)]
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.6 < coarse / fine < 2.4, euler
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.2 < coarse / fine < 6.0, heun
    assert euler[-1] < 1e-2 and heun[-1] < 2e-3


def test_ddpm_ddim_and_dpm_solver_cannot_draw_from_a_flow_which_falls_back_to_euler():
    for name in ("ddpm", "ddim", "dpmpp_2m"):
        with pytest.raises(ValueError, match="its samplers: euler, heun"):
            flow_sampler(name, 10)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["flow"] = {"family": "flow", "class_conditional": True}
    raw["pipeline"]["models"] = ["ddpm", "flow"]
    raw["sample"].update(sampler="ddim", sweep_steps=[], step_list=[])
    params = parse_params(raw)  # the flow falls back to its default sampler
    assert (params.run("digits", "flow").sample.sampler, params.run("digits", "ddpm").sample.sampler) == ("euler", "ddim")
    raw["sample"]["sampler"] = "heun"
    assert parse_params(raw).run("digits", "flow").sample.sampler == "heun"


def test_a_flow_runs_beside_ancestral_ddpm_with_a_sampler_of_its_own():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["flow"] = {"family": "flow", "class_conditional": True}
    raw["pipeline"]["models"] = ["ddpm", "flow"]
    raw["sample"].update(sampler="ddpm", sampler_for={"flow": "heun"})
    params = parse_params(raw)
    assert params.run("digits", "flow").sample.sampler == "heun"
    assert params.run("digits", "ddpm").sample.sampler == "ddpm"
    for sampler_for, message in (({"flow": "ddpm"}, r"sample\.sampler_for\.flow 'ddpm' cannot draw from models\.flow"),
                                 ({"flw": "heun"}, r"sample\.sampler_for names 'flw' but params.yaml has no models\.flw")):
        bad = copy.deepcopy(raw)
        bad["sample"]["sampler_for"] = sampler_for
        with pytest.raises(ConfigError, match=message):
            parse_params(bad)
    raw["sample"]["step_list"] = [999, 500, 0]
    with pytest.raises(ConfigError, match=r"step_list applies to the ddpm and ddim samplers, but sample\.sampler_for"):
        parse_params(raw)


@pytest.mark.parametrize("probes", [1, 8])
def test_ode_likelihood_of_the_flow_is_the_exact_density_of_the_data(probes):
    mu, cov = gaussian()
    x = draw(64, mu, cov, seed=4)
    flow = RectifiedFlow()
    estimate = ode_log_likelihood(flow, exact_model(flow, mu, cov), x, 32, probes, torch.Generator().manual_seed(0))
    diff = estimate - log_density(x, mu, cov)
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 3 * stderr + 0.02, (diff.mean(), stderr)
    wrong = ode_log_likelihood(flow, exact_model(flow, mu, 2 * cov), x, 32, probes, torch.Generator().manual_seed(0))
    assert (log_density(x, mu, cov) - wrong).mean() > 10 * stderr  # a wrong field is caught


def test_inpainting_a_flow_keeps_the_known_pixels_exactly():
    mu, cov = gaussian()
    image = draw(3, mu, cov, seed=5)
    mask = torch.zeros_like(image)
    mask[..., :2] = 1
    flow = RectifiedFlow()
    out = inpaint(exact_model(flow, mu, cov), flow_sampler("euler", 10, shift=2.0), image, mask,
                  torch.Generator().manual_seed(0), resample=3)
    assert torch.equal(out[..., :2], image[..., :2]) and out[..., 2:].isfinite().all()
    assert not torch.equal(out[..., 2:], image[..., 2:])


def test_a_conditional_flow_is_guided_on_its_velocity(net):  # noqa: F811
    flow = RectifiedFlow()
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = net(x, 1000 * t, y), net(x, 1000 * t)
        guided = ConditionalModel(net, flow, 1, 2.5).denoiser(y)(x, t)
        assert torch.equal(ConditionalModel(net, flow, 1, 0.0).denoiser(y)(x, t), uncond)
        assert torch.equal(ConditionalModel(net, flow, 1, 1.0).denoiser(y)(x, t), cond)
    assert torch.allclose(guided[:, :1], uncond[:, :1] + 2.5 * (cond[:, :1] - uncond[:, :1]), atol=1e-5)


def test_guidance_steers_a_class_conditional_flow_to_the_class_asked_for():
    """Two classes, black and white images: unguided (w = 0) the flow draws both whatever was asked;
    conditional (w = 1) mostly the asked-for one, and guided (w = 3) always."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["digits"].update(copy.deepcopy(TINY_NET), train_steps=300, batch_size=32)
    raw["models"] = {"flow": {"family": "flow", "timesteps": 20, "class_conditional": True, "label_dropout": 0.2}}
    raw["pipeline"]["models"] = ["flow"]
    raw["sample"].update(sampler="euler", sweep_steps=[], step_list=[])
    raw["train"].update(lr=2e-3, warmup_steps=10, ema_decay=0.9)
    assert_guidance_steers(parse_params(raw).run("digits", "flow"), "euler")


def test_ddim_inversion_of_a_flow_reconstructs_the_input():
    """The inversion runs on the flow's own marginals (alpha = 1 - t, sigma = t, alpha^2 + sigma^2 != 1): the
    latent it finds for an image is sampled back to that image by the Euler sampler (deterministic DDIM)."""
    mu, cov = gaussian()
    model = exact_model(RectifiedFlow(), mu, cov)
    image = draw(4, mu, cov)
    errors = []
    for steps in (100, 400):
        euler = flow_sampler("euler", steps)
        errors.append((euler(model, ddim_invert(model, euler, image)) - image).abs().max().item())
    assert errors[1] < 0.015 and errors[1] < errors[0] / 3, errors  # first order in the step


def test_a_flow_refuses_the_karras_grid():
    with pytest.raises(ValueError, match="infinite at its start"):
        flow_sampler("euler", 10, grid="karras")
