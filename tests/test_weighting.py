"""Weighted ELBOs (Kingma & Gao 2023), the adaptive log-SNR density and the network's parameterisation
of VDM, against closed forms on Gaussian data with the exact denoiser."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusionlab.core.likelihood import sum_flat
from diffusionlab.families.vdm.gamma import make_gamma
from diffusionlab.families.vdm.logsnr_sampling import AdaptiveLogSNR
from diffusionlab.families.vdm.process import VDM, alpha_sigma, eps_from, target
from diffusionlab.families.vdm.samplers import VDMSampler
from diffusionlab.families.vdm.weighting import EDM_PEAK, Weighting, log_weight
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.guidance import ConditionalModel

G_MIN, G_MAX = -10.0, 6.0  # log-SNR from -6 (noisiest) to 10
MU, VAR = 0.3, 0.2**2


def gamma_of(network_time: torch.Tensor) -> torch.Tensor:
    return G_MIN + network_time / 1000 * (G_MAX - G_MIN)


def exact_eps(z: torch.Tensor, network_time: torch.Tensor) -> torch.Tensor:
    """E[eps | z] for x ~ N(MU, VAR) per pixel: sigma (z - alpha MU) / (alpha^2 VAR + sigma^2)."""
    alpha, sigma = (a.reshape(-1, *([1] * (z.ndim - 1))) for a in alpha_sigma(gamma_of(network_time).double()))
    return sigma * (z - alpha * MU) / (alpha**2 * VAR + sigma**2)


def exact_network(prediction: str):
    """The Bayes-optimal network of a parameterisation: the exact eps turned into its target."""

    def net(z, network_time):
        alpha, sigma = (a.reshape(-1, *([1] * (z.ndim - 1))) for a in alpha_sigma(gamma_of(network_time).double()))
        eps = exact_eps(z, network_time)
        return target(prediction, (z - sigma * eps) / alpha, eps, alpha, sigma)

    return net


def vdm(weighting="elbo", prediction="eps", levels=None, bias=2.0) -> VDM:
    return VDM(make_gamma("fixed", G_MIN, G_MAX), Weighting(weighting, -G_MAX, bias), prediction, levels).double()


def closed_form_weighted_loss(weighting: Weighting, s: float = 0.0) -> float:
    """0.5 int_s^1 w(lambda_t) gamma'(t) E||eps - eps_hat||^2 dt in bits, with E||.||^2 = alpha^2 VAR / (alpha^2 VAR + sigma^2)."""
    t = torch.linspace(s, 1, 200_001, dtype=torch.float64)
    g = G_MIN + (G_MAX - G_MIN) * t
    alpha2 = torch.sigmoid(-g)
    integrand = 0.5 * weighting(-g) * (G_MAX - G_MIN) * alpha2 * VAR / (alpha2 * VAR + 1 - alpha2)
    return torch.trapezoid(integrand, t).item() / math.log(2)


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return MU + math.sqrt(VAR) * torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)


def draws(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = MU + math.sqrt(VAR) * torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
    return x, torch.rand(n, generator=gen, dtype=torch.float64), torch.randn_like(x), torch.randn_like(x)


def test_the_elbo_weighting_is_the_continuous_time_elbo_exactly_on_the_same_draws():
    x, t, eps, eps_0 = draws(64, 0)
    process = vdm("elbo")
    terms = process.loss_terms(exact_eps, x, t, eps, eps_0)
    g_0, g_1 = process.gamma.gamma_0, process.gamma.gamma_1  # the fixed line, as stored
    g = g_0 + (g_1 - g_0) * t
    alpha, sigma = alpha_sigma(g)
    z = alpha.reshape(-1, 1, 1, 1) * x + sigma.reshape(-1, 1, 1, 1) * eps
    by_hand = 0.5 * (g_1 - g_0) * sum_flat((eps - exact_eps(z, process.network_time(g))) ** 2) / (4 * math.log(2))
    assert torch.allclose(terms["diffusion"], by_hand, rtol=1e-12)
    assert torch.equal(terms["weighted"], terms["diffusion"])
    assert torch.equal(terms["loss"], terms["prior"] + terms["reconstruction"] + terms["diffusion"])
    weighted = vdm("sigmoid").loss_terms(exact_eps, x, t, eps, eps_0)
    assert torch.equal(weighted["diffusion"], terms["diffusion"]) and torch.equal(weighted["elbo"], terms["elbo"])
    assert torch.allclose(weighted["loss"], terms["diffusion"] * torch.sigmoid(2.0 + g) / torch.sigmoid(torch.tensor(2.0 + G_MAX)),
                          rtol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "v", "edm"])
def test_weightings_are_monotone_and_one_at_the_noisiest_level(name):
    w = Weighting(name, -G_MAX, bias=2.0)
    lam = torch.linspace(-G_MAX, -G_MIN, 1001, dtype=torch.float64)
    values = w(lam)
    assert values[0].item() == pytest.approx(1.0, abs=1e-12)
    assert (torch.diff(values) <= 1e-15).all() and (values > 0).all()


def test_weightings_match_the_objectives_they_stand_for():
    lam = torch.linspace(-6, 10, 81, dtype=torch.float64)
    # sigmoid: 1 / (1 + e^(lambda - b))
    ratio = Weighting("sigmoid", -6, bias=1.5)(lam) / (1 / (1 + torch.exp(lam - 1.5)))
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)
    # v: ||v - v_hat||^2 = (1 + e^-lambda) ||e||^2 under the cosine schedule, whose t has dt/dlambda =
    # -(1 / pi) e^(-lambda / 2) / (1 + e^-lambda): the weight per unit of lambda is their product
    dt_dlambda = (1 / math.pi) * torch.exp(-lam / 2) / (1 + torch.exp(-lam))
    ratio = Weighting("v", -6)(lam) / ((1 + torch.exp(-lam)) * dt_dlambda)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)
    # edm: the log-normal density of sigma = e^(-lambda / 2) as a density of lambda, times EDM's loss weight
    # (sigma^2 + 0.25) / (0.25 sigma^2) times the sigma^2 that turns an x error into an eps error
    sigma = torch.exp(-lam / 2)
    edm = stats.norm.pdf(np.log(sigma.numpy()), -1.2, 1.2) * 0.5 * (sigma**2 + 0.25).numpy() / 0.25
    above = lam >= EDM_PEAK
    ratio = Weighting("edm", -6)(lam)[above].numpy() / edm[above.numpy()]
    assert np.allclose(ratio, ratio[0], rtol=1e-9)
    assert torch.allclose(Weighting("edm", -6)(lam)[~above], torch.ones(int((~above).sum()), dtype=torch.float64))
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    unclamped = -0.5 * ((grid - 2.4) / 2.4) ** 2 + torch.log(torch.exp(-grid) + 0.25)
    assert grid[unclamped.argmax()].item() == pytest.approx(EDM_PEAK, abs=1e-3)
    assert torch.equal(log_weight("elbo", lam), torch.zeros_like(lam))


@pytest.mark.parametrize("name", ["sigmoid", "edm"])
def test_a_monotone_weighted_loss_is_an_average_of_elbos_of_noise_perturbed_data(name):
    """L_w = w(lambda_max) L(0) + int_0^1 (d/ds w(lambda_s)) L(s) ds with L(s) the diffusion term of the ELBO of
    z_s (the integral from s to 1): the weighted estimator and an estimator over noise-perturbed ELBOs agree
    within their standard errors, and both agree with the closed form."""
    process = vdm(name)
    weighting = process.weighting
    x, t, eps, eps_0 = draws(40_000, 1)
    lhs = process.loss_terms(exact_eps, x, t, eps, eps_0)["weighted"]

    # a noise level s from the mixture: s = 0 with probability w(lambda_max), else with density d/ds w(lambda_s)
    gen = torch.Generator().manual_seed(2)
    grid = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    w_grid = weighting(-(G_MIN + (G_MAX - G_MIN) * grid))
    assert w_grid[-1].item() == pytest.approx(1.0) and w_grid[0] <= w_grid[-1]
    u = torch.rand(len(x), generator=gen, dtype=torch.float64) * w_grid[-1]
    s = torch.from_numpy(np.interp(u.numpy(), w_grid.numpy(), grid.numpy()))
    s[u < w_grid[0]] = 0.0
    # L(s) by the unweighted ELBO's own terms at t ~ U(s, 1), times the length 1 - s of the interval
    t_above = s + (1 - s) * torch.rand(len(x), generator=gen, dtype=torch.float64)
    rhs = (1 - s) * vdm("elbo").loss_terms(exact_eps, x, t_above, eps, eps_0)["diffusion"]

    se = math.sqrt(lhs.var().item() / len(lhs) + rhs.var().item() / len(rhs))
    assert abs(lhs.mean().item() - rhs.mean().item()) < 3 * se
    exact = closed_form_weighted_loss(weighting)
    assert lhs.mean().item() == pytest.approx(exact, abs=3 * math.sqrt(lhs.var().item() / len(lhs)))
    assert rhs.mean().item() == pytest.approx(exact, abs=3 * math.sqrt(rhs.var().item() / len(rhs)))
    assert exact < 0.9 * closed_form_weighted_loss(Weighting("elbo", -G_MAX))  # the weighting matters here


def test_adaptive_levels_are_unbiased_and_lower_the_variance_of_the_weighted_loss():
    levels = AdaptiveLogSNR(-G_MAX, -G_MIN)
    adaptive = vdm("sigmoid", levels=levels)
    uniform = vdm("sigmoid")
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):  # the density learns where the weighted loss lies
        adaptive.losses_for_batch(exact_eps, gaussian_data(256, int(torch.randint(1 << 30, (), generator=gen))), gen)
    # it follows f(lambda) = 0.5 w(lambda) E||eps - eps_hat||^2, with E||.||^2 = alpha^2 VAR / (alpha^2 VAR + sigma^2)
    centres = -G_MAX + (torch.arange(levels.bins, dtype=torch.float64) + 0.5) * levels.width
    alpha2 = torch.sigmoid(centres)
    f = uniform.weighting(centres) * alpha2 * VAR / (alpha2 * VAR + 1 - alpha2)
    want = (1 - levels.uniform_share) * f / f.sum() + levels.uniform_share / levels.bins
    assert torch.allclose(levels.probabilities(), want, rtol=0.3)
    assert want.max() > 3 * want.min()  # far from uniform
    got_adaptive = torch.cat([adaptive.losses_for_batch(exact_eps, gaussian_data(256, 10_000 + i), gen)["weighted"]
                              for i in range(100)])
    got_uniform = torch.cat([uniform.losses_for_batch(exact_eps, gaussian_data(256, 20_000 + i), gen)["weighted"]
                             for i in range(100)])
    exact = closed_form_weighted_loss(uniform.weighting)
    for got in (got_adaptive, got_uniform):
        assert got.mean().item() == pytest.approx(exact, abs=3 * got.std().item() / math.sqrt(len(got)))
    assert got_adaptive.var() < 0.5 * got_uniform.var()


def test_adaptive_levels_draw_from_their_own_density():
    levels = AdaptiveLogSNR(-2.0, 3.0, bins=5, uniform_share=0.0)
    assert torch.equal(levels.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))  # uniform until every bin is seen
    levels.heights.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0], dtype=torch.float64))
    levels.visited.fill_(True)
    lam, density = levels.sample(20_000, torch.device("cpu"), torch.Generator().manual_seed(0), torch.float64)
    counts = torch.bincount(((lam + 2.0) / 1.0).floor().long(), minlength=5)
    assert torch.allclose(counts.double() / 20_000.0, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(density, levels.density(lam)) and torch.allclose(levels.density(lam) * 1.0, levels.probabilities()[
        ((lam + 2.0) / 1.0).floor().long()])


def test_each_parameterisation_round_trips_to_float_precision():
    x, t, eps, _ = draws(32, 4)
    alpha, sigma = (a.reshape(-1, 1, 1, 1) for a in alpha_sigma(G_MIN + (G_MAX - G_MIN) * t))
    z = alpha * x + sigma * eps
    for prediction in ("eps", "v", "x0"):
        assert torch.allclose(eps_from(prediction, target(prediction, x, eps, alpha, sigma), z, alpha, sigma), eps,
                              rtol=0, atol=1e-9)
    x0_of_eps = (z - sigma * eps) / alpha
    assert torch.allclose(eps_from("x0", x0_of_eps, z, alpha, sigma), eps, atol=1e-9)
    v = alpha * eps - sigma * x
    assert torch.allclose(eps_from("v", v, z, alpha, sigma), eps, atol=1e-12)
    assert torch.allclose(alpha * z - sigma * v, x, atol=1e-12)  # x = alpha z - sigma v


def test_a_sampler_gives_the_same_images_whatever_the_parameterisation():
    images = {}
    for prediction in ("eps", "v", "x0"):
        process = vdm(prediction=prediction)
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn(500, 1, 2, 2, generator=gen, dtype=torch.float64)
        sampler = VDMSampler(process, num_steps=100, eta=1.0, clip_denoised=False)
        images[prediction], _ = sample(process.denoiser(exact_network(prediction)), sampler, noise, gen)
    assert torch.allclose(images["v"], images["eps"], atol=1e-8)
    assert torch.allclose(images["x0"], images["eps"], atol=1e-6)
    assert images["eps"].mean().item() == pytest.approx(MU, abs=0.02)
    assert images["eps"].std().item() == pytest.approx(math.sqrt(VAR), rel=0.06)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_a_conditional_vdm_at_w_0_and_1_is_its_unconditional_and_conditional_model_exactly(prediction):
    from diffusionlab.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                          dropout=0.0), image_size=8, in_channels=1, out_channels=1, num_classes=3).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    process = VDM(make_gamma("fixed", G_MIN, G_MAX), Weighting("v", -G_MAX), prediction)
    z, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        conditional = process.denoiser(lambda zz, time: net(zz, time, y))(z, t)
        unconditional = process.denoiser(lambda zz, time: net(zz, time, torch.full_like(y, 3)))(z, t)
        assert torch.equal(ConditionalModel(net, process, 1, 1.0).denoiser(y)(z, t), conditional)
        assert torch.equal(ConditionalModel(net, process, 1, 0.0).denoiser(y)(z, t), unconditional)
        assert not torch.allclose(conditional, unconditional)
        guided = ConditionalModel(net, process, 1, 3.0).denoiser(y)(z, t)
        assert torch.allclose(guided, unconditional + 3 * (conditional - unconditional), atol=1e-4)
