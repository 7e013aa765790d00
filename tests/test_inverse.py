"""Inpainting (RePaint), the forward/reverse round trip and DDIM inversion, on data whose exact denoiser
is known in closed form."""

import pytest
import torch

from diffusionlab.config.sampling import SampleConfig
from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.schedules import cosine_betas, linear_betas
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.inverse import ddim_invert, inpaint, round_trip
from diffusionlab.sampling.samplers import make_sampler

from test_samplers import MU, STD, gaussian_oracle


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(1000) if request.param == "linear" else cosine_betas(1000)
    return GaussianDiffusion(betas, dtype=torch.float64)


def flat_image_oracle(diffusion):
    """Exact eps for images whose pixels all equal one value c ~ N(MU, STD^2): only the image mean m of x_t
    carries information, E[c | x_t] = MU + sqrt(a) STD^2 (m - sqrt(a) MU) / (a STD^2 + (1 - a) / D)."""
    abar = torch.as_tensor(diffusion.float64["alphas_cumprod"])

    def eps(x, t):
        a = abar[t].reshape(-1, 1, 1, 1).to(x.dtype)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        c = MU + a.sqrt() * STD**2 * (m - a.sqrt() * MU) / (a * STD**2 + (1 - a) / x[0].numel())
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    return eps


def sampler(diffusion, name, steps, eta=0.0):
    return make_sampler(SampleConfig(sampler=name, steps=steps, eta=eta, clip_denoised=False), diffusion, 1000)


@pytest.mark.parametrize("name,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_inpainting_keeps_the_known_pixels_and_resampling_makes_the_rest_agree_with_them(diffusion, name, eta):
    gen = torch.Generator().manual_seed(0)
    value = MU + STD * torch.randn(2000, 1, 1, 1, generator=gen, dtype=torch.float64)
    image = value.expand(2000, 1, 4, 4).clone()
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1  # left half known
    errors = {}
    for resample in (1, 5):
        out = inpaint(flat_image_oracle(diffusion), sampler(diffusion, name, 50, eta), image, mask, gen, resample)
        assert torch.equal(out[..., :2], image[..., :2])
        errors[resample] = (out[..., 2:] - image[..., 2:]).abs().mean().item()
    # the unknown half must take the known value (the prior alone would leave it STD * 0.8 away on average)
    assert errors[5] < 0.005 and errors[5] < errors[1] / 2 and errors[1] < 0.1


def test_inpainting_refuses_a_multistep_solver(diffusion):
    image = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="ddpm or ddim"):
        inpaint(flat_image_oracle(diffusion), sampler(diffusion, "dpmpp_2m", 10), image, torch.ones_like(image))


def test_round_trip_keeps_the_image_from_a_low_step_and_forgets_it_from_the_last(diffusion):
    gen = torch.Generator().manual_seed(0)
    x0 = MU + STD * torch.randn(4000, 1, 2, 2, generator=gen, dtype=torch.float64)
    s = sampler(diffusion, "ddpm", 100)

    def correlation(start):
        out = round_trip(gaussian_oracle(diffusion), s, x0, start, gen)
        return torch.corrcoef(torch.stack([out.flatten(), x0.flatten()]))[0, 1].item()

    assert s.timesteps[99] == 0 and s.timesteps[0] == 999
    assert correlation(99) > 0.99
    assert abs(correlation(0)) < 0.05
    assert correlation(99) > correlation(90) > correlation(50)


def test_ddim_inversion_reconstructs_the_input_and_converges_with_the_step_count(diffusion):
    gen = torch.Generator().manual_seed(0)
    x0 = MU + STD * torch.randn(1000, 1, 2, 2, generator=gen, dtype=torch.float64)
    errors = []
    for steps in (100, 500):
        s = sampler(diffusion, "ddim", steps)
        latent = ddim_invert(gaussian_oracle(diffusion), s, x0)
        back, _ = sample(gaussian_oracle(diffusion), s, latent)
        again, _ = sample(gaussian_oracle(diffusion), s, latent)
        assert torch.equal(back, again)  # eta = 0: deterministic
        assert latent.std().item() == pytest.approx(1.0, abs=0.06)  # the latent of data is standard normal
        errors.append((back - x0).abs().max().item())
    assert errors[1] < 0.03 and errors[1] < errors[0] / 3
