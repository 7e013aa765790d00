"""The edm family (Karras et al. 2022): its preconditioning, loss, grid, Heun with churn and its variance-exploding
prior on every sampling path, against closed forms and the exact denoiser of Gaussian data."""

import math

import numpy as np
import pytest
import torch

from diffusionlab.config.sampling import SampleConfig
from diffusionlab.core.ode import ode_log_likelihood
from diffusionlab.core.process import karras_taus
from diffusionlab.families.edm.process import EDM
from diffusionlab.sampling.generation import draw_batch
from diffusionlab.sampling.inverse import inpaint
from diffusionlab.sampling.ode import Churn, HeunSampler
from diffusionlab.sampling.samplers import make_sampler

from gaussian_data import DIMS, SHAPE, affine_map, draw, exact_model, gaussian, log_density

F64 = torch.float64


def edm(sigma_data=0.5):
    return EDM(sigma_data=sigma_data).double()


def sampler_of(process, name, steps, **options):
    return make_sampler(SampleConfig(sampler=name, steps=steps, clip_denoised=False, **options), process, steps)


def test_the_preconditioning_at_sigma_data_and_its_limits():
    """c_skip = sigma_d^2 / (sigma^2 + sigma_d^2), c_out = sigma sigma_d / sqrt(.), c_in = 1 / sqrt(.): at sigma =
    sigma_d a half, sigma_d / sqrt 2 and 1 / (sigma_d sqrt 2); D -> x as sigma -> 0, D -> sigma_d F as sigma -> inf."""
    process = edm(0.5)
    c_skip, c_out, c_in = (c.item() for c in process.preconditioning(torch.tensor(0.5, dtype=F64)))
    assert (c_skip, c_out, c_in) == pytest.approx((0.5, 0.5 / math.sqrt(2), 1 / (0.5 * math.sqrt(2))), rel=1e-12)
    small, large = (process.preconditioning(torch.tensor(s, dtype=F64)) for s in (1e-6, 1e6))
    assert small[0].item() == pytest.approx(1, abs=1e-11) and small[1].item() == pytest.approx(0, abs=1e-6)
    assert large[0].item() == pytest.approx(0, abs=1e-12) and large[1].item() == pytest.approx(0.5, rel=1e-9)
    assert large[2].item() * 1e6 == pytest.approx(1, rel=1e-9)
    x = torch.randn(3, *SHAPE, dtype=F64)
    net = lambda x_in, t: torch.ones_like(x_in)  # noqa: E731
    sigma = torch.tensor([1e-8, 1.0, 1e8], dtype=F64)
    d = process.denoise(net, x, sigma)
    torch.testing.assert_close(d[0], x[0], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d[2], torch.full_like(d[2], 0.5), rtol=1e-6, atol=1e-6)


def test_the_denoisers_eps_is_x_minus_d_over_sigma_and_the_loss_is_fs_unit_weighted_error():
    """eps_hat = (x - D) / sigma, written without cancellation; lambda(sigma) ||D - x_0||^2 = ||F - F_target||^2 with
    F_target = (x_0 - c_skip x) / c_out (Karras et al. eq. 8)."""
    process = edm(0.4)
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(*SHAPE, generator=g, dtype=F64)
    net = lambda x_in, t: torch.tanh(x_in) * weights + 0.01 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    x0 = torch.randn(5, *SHAPE, generator=g, dtype=F64)
    eps = torch.randn(5, *SHAPE, generator=g, dtype=F64)
    sigma = torch.tensor([0.002, 0.1, 0.4, 3.0, 80.0], dtype=F64)
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    d = process.denoise(net, x, sigma)
    torch.testing.assert_close(process.denoiser(net)(x, sigma), (x - d) / sigma.reshape(-1, 1, 1, 1))
    terms = process.training_losses(net, x0, sigma, eps)
    c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in process.preconditioning(sigma))
    f = net(c_in * x, process.network_time(sigma))
    target = (x0 - c_skip * x) / c_out
    torch.testing.assert_close(terms["loss"].double(), ((f - target) ** 2).flatten(1).mean(1), rtol=1e-5, atol=0)


def test_training_levels_are_log_normal_and_sigma_data_is_measured_on_the_pixels():
    process = EDM(sigma_data=None, p_mean=-1.2, p_std=1.2)
    images = torch.randint(0, 256, (500, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    process.fit_data(images)
    assert float(process.sigma_data) == pytest.approx((images.double() / 127.5 - 1).std(unbiased=False).item(),
                                                      rel=1e-9)
    seen = []
    net = lambda x_in, t: (seen.append(t), torch.zeros_like(x_in))[1]  # noqa: E731
    process.losses_for_batch(net, torch.zeros(20_000, 1, 1, 1), torch.Generator().manual_seed(1))
    log_sigma = seen[0].double() / 250  # the network sees 250 ln(sigma)
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.03)
    restored = EDM(sigma_data=None)
    restored.load_state_dict(process.state_dict())  # the measured value travels with the checkpoint
    assert float(restored.sigma_data) == float(process.sigma_data)


def test_the_karras_grid_is_equation_5():
    sigmas = karras_taus(18, 0.002, 80.0, 7.0)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.002) and len(sigmas) == 18
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np.allclose(sigmas, expected, rtol=1e-12)
    assert karras_taus(1, 0.002, 80.0, 7.0) == [pytest.approx(80.0)]
    grid = edm().time_grid(18)
    assert grid.times == grid.sigmas == sigmas and grid.alphas == [1.0] * 18


def moment_error(sampler, process, mu, cov):
    """Largest error of the mean and covariance the deterministic sampler gives the data from the exact marginal at
    sigma_max, N(mu, Sigma + sigma_max^2 I) (the prior N(0, sigma_max^2 I) differs from it by about 1e-3 here)."""
    m, b = affine_map(sampler, exact_model(process, mu, cov))
    start = cov + process.prior_sigma**2 * torch.eye(DIMS, dtype=F64)
    return float((m @ mu + b - mu).abs().max() + (m @ start @ m.T - cov).abs().max())


def test_heun_on_the_karras_grid_recovers_the_data_distribution_at_second_order():
    """With the exact denoiser of N(mu, Sigma): doubling the levels about quarters Heun's error."""
    process = edm()
    mu, cov = gaussian()
    errors = [moment_error(sampler_of(process, "heun", n), process, mu, cov) for n in (18, 36, 72)]
    assert errors[2] < 2e-3, errors
    assert errors[1] / errors[2] > 3.0, errors
    assert sampler_of(process, "heun", 18).evaluations == 35


def test_churn_zero_is_the_deterministic_sampler_and_churn_keeps_the_data_distribution():
    process = edm()
    mu, cov = gaussian()
    model = exact_model(process, mu, cov)
    noise = process.prior_sigma * torch.randn(4000, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    plain = HeunSampler(process, process.time_grid(32), clip_denoised=False)
    zero = HeunSampler(process, process.time_grid(32), clip_denoised=False, churn=Churn(0.0, 0.05, 50.0, 1.003))
    assert torch.equal(plain(model, noise, torch.Generator().manual_seed(1)),
                       zero(model, noise, torch.Generator().manual_seed(2)))
    churned = sampler_of(process, "heun", 32, churn=40.0, churn_tmin=0.05, churn_tmax=50.0)
    a = churned(model, noise, torch.Generator().manual_seed(1))
    b = churned(model, noise, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, plain(model, noise))  # its fresh noise comes from the generator
    flat = a.reshape(len(a), -1)
    assert (flat.mean(0) - mu).abs().max() < 0.03
    assert (torch.cov(flat.T) - cov).abs().max() < 0.03


def test_churn_is_refused_for_a_process_that_is_not_variance_exploding():
    from diffusionlab.families.flow.process import RectifiedFlow

    with pytest.raises(ValueError, match="only a variance-exploding model"):
        sampler_of(RectifiedFlow(), "heun", 8, churn=10.0)


class ExactModel:
    """What the generation loop asks of a model: the denoiser for labels, no decoder."""

    def __init__(self, model):
        self.model, self.decode = model, None

    def denoiser(self, labels):
        return self.model


def test_generation_starts_from_the_variance_exploding_prior():
    """The images of the generation loop have the data's spread: from N(0, I) they would be a blur of the mean."""
    process = edm()
    mu, cov = torch.zeros(DIMS, dtype=F64), 0.2 * torch.eye(DIMS, dtype=F64)
    sampler = sampler_of(process, "heun", 24)
    images, _ = draw_batch(ExactModel(exact_model(process, mu, cov)), sampler, np.arange(400), 400, SHAPE,
                           torch.device("cpu"), seed=0)
    x = images.double() / 127.5 - 1
    assert x.std().item() == pytest.approx(math.sqrt(0.2), rel=0.1)


def test_inpainting_an_edm_model_fills_the_hole_from_the_prior():
    process = edm()
    mu, cov = gaussian()
    image = draw(200, mu, cov, seed=5)
    mask = torch.zeros_like(image)
    mask[..., :2] = 1
    out = inpaint(exact_model(process, mu, cov), sampler_of(process, "euler", 32), image, mask,
                  torch.Generator().manual_seed(0), resample=2)
    assert torch.equal(out[..., :2], image[..., :2])
    spread = out[..., 2:].std(0)  # conditional spread of the unknown pixels: below the prior's, far above 0
    assert (spread > 0.05).all() and (spread < 1.0).all()


@pytest.mark.parametrize("probes", [1, 8])
def test_ode_likelihood_of_edm_is_the_exact_density_of_the_data(probes):
    """The prior at sigma_max is N(0, sigma_max^2 I): with N(0, I) there the estimate would be off by about
    D ln(80) nats."""
    mu, cov = gaussian()
    x = draw(64, mu, cov, seed=4)
    process = edm()
    estimate = ode_log_likelihood(process, exact_model(process, mu, cov), x, 64, probes,
                                  torch.Generator().manual_seed(0))
    diff = estimate - log_density(x, mu, cov)
    stderr = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 3 * stderr + 0.05, (diff.mean(), stderr)
