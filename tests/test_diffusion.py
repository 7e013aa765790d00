import numpy as np
import pytest
import torch

from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.schedules import cosine_betas, linear_betas


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request):
    betas = linear_betas(1000) if request.param == "linear" else cosine_betas(1000)
    return GaussianDiffusion(betas, dtype=torch.float64)


def test_q_sample_has_the_closed_form_mean_and_variance(diffusion):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for step in (0, 100, 500, 999):
        t = torch.full((x0.shape[0],), step)
        xt = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
        abar = np.prod(1 - diffusion.float64["betas"][: step + 1])
        assert xt.mean().item() == pytest.approx(np.sqrt(abar) * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - abar, rel=2e-2, abs=2e-4)
        mean, var = diffusion.q_mean_variance(x0[:1], t[:1])
        assert mean.item() == pytest.approx(np.sqrt(abar) * 0.7, rel=1e-12)
        assert var.item() == pytest.approx(1 - abar, rel=1e-12)


def test_posterior_coefficients_match_their_formulas(diffusion):
    b = diffusion.float64["betas"]
    abar = np.cumprod(1 - b)
    for t in (1, 10, 500, 999):
        var = b[t] * (1 - abar[t - 1]) / (1 - abar[t])
        c1 = np.sqrt(abar[t - 1]) * b[t] / (1 - abar[t])
        c2 = np.sqrt(1 - b[t]) * (1 - abar[t - 1]) / (1 - abar[t])
        assert diffusion.float64["posterior_variance"][t] == pytest.approx(var, rel=1e-12)
        assert diffusion.float64["posterior_mean_coef1"][t] == pytest.approx(c1, rel=1e-12)
        assert diffusion.float64["posterior_mean_coef2"][t] == pytest.approx(c2, rel=1e-12)
    assert diffusion.float64["posterior_variance"][0] == 0.0
    assert diffusion.float64["posterior_log_variance_clipped"][0] == np.log(diffusion.float64["posterior_variance"][1])


def test_posterior_is_the_gaussian_product_of_forward_marginals(diffusion):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): check the mean by completing the square."""
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-1.1]], dtype=torch.float64)
    for step in (1, 300, 999):
        t = torch.tensor([step])
        b = diffusion.float64["betas"][step]
        abar_prev = np.prod(1 - diffusion.float64["betas"][:step])
        # precisions of the two Gaussians in x_{t-1}
        p1, p2 = (1 - b) / b, 1 / (1 - abar_prev)
        mean = (np.sqrt(1 - b) / b * xt.item() + np.sqrt(abar_prev) / (1 - abar_prev) * x0.item()) / (p1 + p2)
        got_mean, got_var, _ = diffusion.q_posterior(x0, xt, t)
        assert got_mean.item() == pytest.approx(mean, rel=1e-9)
        assert got_var.item() == pytest.approx(1 / (p1 + p2), rel=1e-9)


def test_x0_and_eps_predictions_invert_q_sample(diffusion):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,), generator=gen)
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_start_from_noise(xt, t, eps), x0, atol=1e-8)
    assert torch.allclose(diffusion.predict_noise_from_start(xt, t, x0), eps, atol=1e-8)


def test_simple_loss_on_known_inputs(diffusion):
    x0 = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    noise = torch.ones_like(x0)
    t = torch.tensor([0, 5, 999])
    perfect = diffusion.training_losses(lambda x, t: noise, x0, t, noise)
    assert torch.equal(perfect["loss"], torch.zeros(3, dtype=torch.float64))
    off_by_two = diffusion.training_losses(lambda x, t: noise + 2.0, x0, t, noise)
    assert torch.allclose(off_by_two["loss"], torch.full((3,), 4.0, dtype=torch.float64))
    half = diffusion.training_losses(lambda x, t: (noise + 2.0).bfloat16(), x0.bfloat16(), t, noise.bfloat16())
    assert half["loss"].dtype == torch.float32  # reduced in fp32 under mixed precision
    assert set(off_by_two) == {"loss", "mse"}


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_the_min_snr_loss_weighs_each_step_by_min_snr_gamma_over_snr(diffusion, gamma):
    """Hang et al. 2023: with SNR_t = alpha_bar_t / (1 - alpha_bar_t), the eps loss at step t weighs
    min(SNR_t, gamma) / SNR_t: gamma / SNR_t where SNR_t > gamma (little noise), 1 elsewhere."""
    weighted = GaussianDiffusion(diffusion.float64["betas"], loss="min_snr", dtype=torch.float64, min_snr_gamma=gamma)
    abar = np.cumprod(1 - diffusion.float64["betas"])
    snr = abar / (1 - abar)
    t = torch.tensor([0, 50, int(np.argmin(np.abs(snr - gamma))), 500, 999])
    x0 = torch.zeros(len(t), 1, 2, 2, dtype=torch.float64)
    noise = torch.ones_like(x0)
    terms = weighted.training_losses(lambda x, t: noise + 2.0, x0, t, noise)
    expected = torch.as_tensor(np.where(snr[t] > gamma, gamma / snr[t], 1.0)) * 4.0
    assert torch.allclose(terms["loss"], expected, rtol=1e-12)
    assert torch.equal(terms["loss"][snr[t] <= gamma], torch.full((int((snr[t] <= gamma).sum()),), 4.0,
                                                                   dtype=torch.float64)), "weight exactly 1 there"
    assert torch.equal(terms["mse"], torch.full((5,), 4.0, dtype=torch.float64)), "mse stays L_simple"
    assert terms["loss"][0] < 4.0 * 1e-2 and terms["loss"][-1] == 4.0, "the first step is down-weighted, the last not"
    for gamma in (0.0, None):
        with pytest.raises(ValueError, match="the min_snr loss needs a positive min_snr_gamma"):
            GaussianDiffusion(diffusion.float64["betas"], loss="min_snr", min_snr_gamma=gamma)


def test_a_ddpm_block_with_the_min_snr_loss_builds_its_process_with_its_gamma():
    from diffusionlab.families.ddpm.params import DDPMParams
    from diffusionlab.families.ddpm.process import build

    process = build(DDPMParams(loss="min_snr", min_snr_gamma=3.0))
    assert (process.loss, process.min_snr_gamma) == ("min_snr", 3.0)
    assert build(DDPMParams()).loss == "simple"


def test_invalid_betas_are_rejected():
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, 1.5]))


def test_a_min_snr_model_samples_on_fewer_steps_than_it_was_trained_on():
    from diffusionlab.families.ddpm.samplers import DDPMSampler

    weighted = GaussianDiffusion(linear_betas(1000), loss="min_snr", min_snr_gamma=5.0)
    sampler = DDPMSampler(weighted, 10)
    assert sampler.respaced.num_timesteps == 10 and sampler.respaced.min_snr_gamma == 5.0
