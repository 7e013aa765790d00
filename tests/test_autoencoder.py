"""The latent autoencoder (Rombach et al. 2022): shapes, the KL term, the latent scale."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.distributions import Normal, kl_divergence

from diffusionlab.config.params import parse_params
from diffusionlab.errors import ConfigError
from diffusionlab.nn.autoencoder import Autoencoder, AutoencoderConfig, Posterior, latent_scale
from diffusionlab.runtime.factory import build_network, build_process


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_encode_and_decode_shapes_for_each_downsampling_factor(factor, channels):
    ae = Autoencoder(AutoencoderConfig(factor=factor, latent_channels=3, base_channels=8), channels)
    x = torch.randn(2, channels, 16, 16)
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 3, 16 // factor, 16 // factor)
    assert ae.latent_shape(16) == (3, 16 // factor, 16 // factor)
    assert ae.decode(posterior.sample()).shape == x.shape


def test_the_kl_term_is_the_closed_form_of_two_gaussians():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(Posterior(mean, logvar).kl(), expected, atol=1e-5)
    assert torch.equal(Posterior(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl(), torch.zeros(1))


def test_posterior_samples_have_its_mean_and_variance():
    mean, logvar = torch.full((1, 1, 200, 200), 0.5), torch.full((1, 1, 200, 200), -1.0)
    z = Posterior(mean, logvar).sample(torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(0.5, abs=0.01)
    assert z.var().item() == pytest.approx(torch.e ** -1, rel=0.02)


def test_the_loss_is_the_squared_error_plus_the_weighted_kl():
    ae = Autoencoder(AutoencoderConfig(factor=2, latent_channels=2, base_channels=8), 1)
    terms = ae.losses(torch.randn(4, 1, 8, 8), 0.5, torch.Generator().manual_seed(0))
    assert terms["loss"].shape == (4,)
    assert torch.allclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"])


def test_scaled_latents_have_unit_spread_and_unscale_to_the_latents():
    z = 3.0 * torch.randn(4000) + 1.0
    scale = latent_scale(z)
    assert (z * scale).std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(z * scale / scale, z)
    with pytest.raises(ValueError, match="zero spread"):
        latent_scale(torch.ones(10))


@pytest.fixture(scope="module")
def digits():
    from diffusionlab.datasets import prepare_digits

    return prepare_digits(8, 300, 0)


@pytest.fixture(scope="module")
def trained(digits):
    from diffusionlab.runtime.autoencoding import train_autoencoder

    cfg = AutoencoderConfig(factor=2, latent_channels=2, base_channels=8, steps=20, batch_size=16)
    return train_autoencoder(cfg, digits.train_images[:64], torch.device("cpu"), log_every=10)


def test_a_trained_codec_encodes_scaled_latents_of_unit_spread_and_decodes_images(trained, digits):
    from diffusionlab.runtime.autoencoding import reconstruct

    codec = trained.codec
    latents = codec.encode(digits.train_images[:64])
    assert latents.shape == (64, 2, 4, 4) and latents.dtype == np.float32
    assert torch.from_numpy(latents).std().item() == pytest.approx(1.0, rel=1e-5)  # scale fitted on these images
    decoded = codec.decode(torch.from_numpy(latents[:3]))
    assert decoded.shape == (3, 1, 8, 8) and decoded.abs().max() <= 1.0
    assert reconstruct(codec, digits.test_images[:5]).dtype == np.uint8
    assert [row["step"] for row in trained.history] == [10, 20]


def test_the_codec_saves_and_loads_and_refuses_other_params_or_a_missing_file(trained, tmp_path):
    from diffusionlab.errors import StageInputError
    from diffusionlab.runtime.latent import load_codec, save_codec

    save_codec(tmp_path / "autoencoder.pt", trained, "digits", "key")
    loaded = load_codec(tmp_path / "autoencoder.pt", "cpu", trained.codec.config)
    z = torch.randn(2, 2, 4, 4)
    assert loaded.scale == trained.codec.scale and torch.equal(loaded.decode(z), trained.codec.decode(z))
    with pytest.raises(StageInputError, match="was trained with autoencoder params"):
        load_codec(tmp_path / "autoencoder.pt", "cpu", trained.codec.config.model_copy(update={"kl_weight": 1.0}))
    with pytest.raises(StageInputError, match=r"missing: a latent model.s train stage trains its autoencoder first: dvc repro train@test_the_codec"):
        load_codec(tmp_path / "none.pt", "cpu")


def test_a_saved_codec_is_reused_only_for_the_same_params_and_key(trained, digits, tmp_path):
    from diffusionlab.runtime.latent import images_digest, reusable_codec, save_codec

    key = images_digest(digits.train_images[:64])
    assert key == images_digest(digits.train_images[:64].copy()) != images_digest(digits.train_images[1:65])
    assert reusable_codec(tmp_path / "autoencoder.pt", "cpu", trained.codec.config, key) is None
    save_codec(tmp_path / "autoencoder.pt", trained, "digits", key)
    again = reusable_codec(tmp_path / "autoencoder.pt", "cpu", trained.codec.config, key)
    z = torch.randn(2, 2, 4, 4)
    assert again.history == trained.history and again.seconds == trained.seconds
    assert torch.equal(again.codec.decode(z), trained.codec.decode(z)) and again.codec.scale == trained.codec.scale
    other = trained.codec.config.model_copy(update={"kl_weight": 1.0})
    assert reusable_codec(tmp_path / "autoencoder.pt", "cpu", other, key) is None
    assert reusable_codec(tmp_path / "autoencoder.pt", "cpu", trained.codec.config, "other images") is None


def test_a_latent_model_samples_latents_and_returns_decoded_images_also_after_pickling(trained, digits):
    import copy
    import pickle

    import yaml

    from diffusionlab.config.params import parse_params
    from diffusionlab.runtime.model import DiffusionModel
    from diffusionlab.runtime.training import Trainer

    from test_training import MODELS, ROOT, TINY_NET

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["digits"].update(copy.deepcopy(TINY_NET))
    raw["models"] = {"flow": {**MODELS["flow"], "autoencoder": trained.codec.config.model_dump()}}
    raw["pipeline"]["models"] = ["flow"]
    raw["sample"].update(sampler="euler", steps=3, sweep_steps=[], step_list=[])
    run = parse_params(raw).run("digits", "flow")
    assert run.model_size == 4 and run.autoencoder == trained.codec.config
    trainer = Trainer(run, trained.codec.encode(digits.train_images[:32]), torch.device("cpu"))
    trainer.train_step()
    model = DiffusionModel(run, 2, trainer.ema.module, trainer.process, 1, trained.codec)
    assert model.sample_shape == (2, 4, 4) and model.image_shape == (1, 8, 8)
    images = model.sample(3, seed=0)
    assert images.shape == (3, 1, 8, 8) and images.dtype == np.uint8
    again = pickle.loads(pickle.dumps(model))
    assert again.codec.scale == trained.codec.scale
    assert np.array_equal(again.sample(3, seed=0), images)


def test_a_latent_model_never_clips_its_predicted_latent_to_the_pixel_range():
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["pipeline"]["models"] = ["vdm", "vdm_latent"]
    params = parse_params(raw)
    assert params.sample.clip_denoised and params.run("digits", "vdm").sample.clip_denoised
    assert not params.run("digits", "vdm_latent").sample.clip_denoised  # scaled latents spread beyond [-1, 1]


@pytest.mark.parametrize("change, message", [
    ({"factor": 4, "image_size": 8}, r"models\.vdm_latent \(a latent model\) on datasets\.digits: its backbone does not "
                                     r"fit the 2-pixel latent of models\.vdm_latent\.autoencoder\.factor 4: image_size "
                                     r"would be 2"),
    ({"patch_size": 16}, r"models\.flow_dit on the 8-pixel latents of datasets\.digits: .*dit\.patch_size 16 does not "
                         r"divide the image size 8"),
])
def test_a_latent_size_the_backbone_cannot_take_is_one_line_at_parse_time(change, message):
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["models"]["vdm_latent"]["autoencoder"]["factor"] = change.pop("factor", 2)
    raw["models"]["flow_dit"]["autoencoder"] = raw["models"]["vdm_latent"]["autoencoder"]
    raw["pipeline"]["models"] = ["vdm_latent", "flow_dit"]
    raw["sample"]["sampler_for"] = {"flow_dit": "euler"}
    raw["datasets"]["digits"]["image_size"] = change.pop("image_size", 16)
    raw["datasets"]["digits"]["dit"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_a_latent_u_net_keeps_the_levels_its_latent_can_be_halved_for():
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["pipeline"].update(datasets=["mnist"], models=["vdm", "vdm_latent"])
    params = parse_params(raw)
    assert params.run("mnist", "vdm").data.unet.channel_mult == (1, 2, 2)  # 28 -> 14 -> 7
    run = params.run("mnist", "vdm_latent")
    assert (run.model_size, run.data.image_size, run.unet.channel_mult) == (14, 28, (1, 2))  # 14 -> 7
    process = build_process(run)
    net = build_network(run, run.autoencoder.latent_channels, process)
    out = net(torch.zeros(2, 4, 14, 14), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 4, 14, 14)
