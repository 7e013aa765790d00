"""The Diffusion Transformer (Peebles & Xie 2023) and skip-layer guidance (Stable Diffusion 3.5)."""

import copy

import numpy as np
import pytest
import torch
import yaml

from diffusionlab.config.params import parse_params
from diffusionlab.errors import ConfigError
from diffusionlab.nn.dit import DiT, DiTConfig, patchify, sincos_2d, unpatchify
from diffusionlab.nn.unet import UNet, UNetConfig
from diffusionlab.runtime.checkpoint import load_checkpoint, save_checkpoint
from diffusionlab.runtime.factory import build_network, build_process
from diffusionlab.runtime.training import Trainer
from diffusionlab.sampling.guidance import ConditionalModel, SkipLayerGuidance, guided_network

from test_training import MODELS, ROOT, TINY_NET

CPU = torch.device("cpu")
TINY_DIT = {"patch_size": 2, "hidden_size": 16, "depth": 3, "num_heads": 2, "mlp_ratio": 4.0}


def perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``net`` with every weight drawn afresh, so that the zero-initialised gates and head are not zero."""
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net.eval()


def dit(out_channels=2, num_classes=3, depth=3):
    return DiT(DiTConfig(**{**TINY_DIT, "depth": depth}), image_size=8, in_channels=1, out_channels=out_channels,
               num_classes=num_classes)


def dit_params(model="ddpm", **dataset):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["digits"].update(copy.deepcopy(TINY_NET), network="dit", dit=dict(TINY_DIT), **dataset)
    raw["models"] = copy.deepcopy(MODELS)
    raw["pipeline"]["models"] = [model]
    raw["sample"].update(sampler="euler" if model == "flow" else "ddpm", sweep_steps=[], step_list=[])
    raw["train"].update(log_every=3, warmup_steps=2, checkpoint_every=4)
    return raw


def test_patchify_cuts_row_major_patches_and_unpatchify_inverts_it():
    x = torch.randn(2, 3, 8, 4)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 8, 12)
    assert torch.equal(tokens[1, 3].reshape(2, 2, 3), x[1, :, 2:4, 2:4].permute(1, 2, 0))  # row 1, column 1
    assert torch.equal(unpatchify(tokens, 2, 3, 8, 4), x)


def test_the_position_embedding_is_sin_cos_of_the_row_and_the_column():
    emb = sincos_2d(8, 2, 3)
    assert emb.shape == (6, 8)
    # position (row 0, column 0): sin 0 = 0 in the sine halves, cos 0 = 1 in the cosine halves
    assert torch.equal(emb[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # token 4 is row 1, column 1: both halves equal; the lowest frequency is 1 radian per position
    assert torch.equal(emb[4, :4], emb[4, 4:])
    assert emb[4, 0].item() == pytest.approx(np.sin(1.0), abs=1e-7)
    assert emb[5, 4].item() == pytest.approx(np.sin(2.0), abs=1e-7)  # column 2


def test_adaln_zero_makes_every_block_the_identity_and_the_output_zero_at_initialisation():
    torch.manual_seed(0)
    net = dit()
    x, t, y = torch.randn(4, 1, 8, 8), torch.randint(0, 50, (4,)), torch.tensor([0, 1, 2, 3])
    tokens = torch.randn(4, 16, 16)
    c = net.conditioning(t, y)
    for block in net.blocks:
        assert torch.equal(block(tokens, c), tokens)
    assert torch.equal(net(x, t, y), torch.zeros(4, 2, 8, 8))


@pytest.mark.parametrize("family", ["ddpm", "vlb", "vdm", "flow"])
def test_the_transformer_gives_each_family_its_output_shape_and_dtype(family):
    raw = dit_params(family)
    run = parse_params(raw).run("digits", family)
    process = build_process(run)
    net = perturbed(build_network(run, 1, process))
    assert isinstance(net, DiT)
    expected = 2 if family == "vlb" else 1  # the learned variance of vlb
    x = torch.randn(3, 1, 8, 8)
    t = torch.randint(0, 50, (3,)) if run.model.discrete else torch.rand(3)
    for dtype in (torch.float32, torch.float64):
        out = net.to(dtype)(x.to(dtype), t)
        assert out.shape == (3, expected, 8, 8) and out.dtype == dtype


def test_class_conditional_and_null_label_paths_and_guidance_at_w_0_and_1_are_exact():
    net = perturbed(dit())
    x, t, y = torch.randn(5, 1, 8, 8), torch.randint(0, 50, (5,)), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
        assert not torch.allclose(cond, uncond)
        assert torch.equal(net(x, t), uncond)  # no label is the null label
        assert torch.equal(guided_network(net, y, torch.full_like(y, 3), 0.0, 1)(x, t), uncond)
        assert torch.equal(guided_network(net, y, torch.full_like(y, 3), 1.0, 1)(x, t), cond)
        guided = guided_network(net, y, torch.full_like(y, 3), 2.5, 1)(x, t)
    assert torch.allclose(guided[:, :1], uncond[:, :1] + 2.5 * (cond[:, :1] - uncond[:, :1]), atol=1e-5)
    with pytest.raises(ValueError, match="class_conditional: true"):
        dit(num_classes=0)(x, t, y)


def test_skipping_a_block_is_the_transformer_without_it():
    net = perturbed(dit(depth=3))
    shorter = copy.deepcopy(net)
    del shorter.blocks[1]
    x, t, y = torch.randn(2, 1, 8, 8), torch.randint(0, 50, (2,)), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(net(x, t, y, skip_layers=(1,)), shorter(x, t, y))
        assert not torch.allclose(net(x, t, y, skip_layers=(1,)), net(x, t, y))
    with pytest.raises(ValueError, match=r"skip_layers \[3\] are not blocks of this transformer \(0..2\)"):
        net(x, t, y, skip_layers=(3,))


class Identity:
    """The VP marginal of a process whose denoiser is the network itself at t in [0, 1]."""

    def denoiser(self, net):
        return net

    def marginal(self, t):
        return torch.cos(t * torch.pi / 2), torch.sin(t * torch.pi / 2)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_skip_layer_guidance_off_is_plain_guidance_exactly_and_on_adds_the_scaled_difference(w):
    net, process = perturbed(dit()), Identity()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.tensor([0.05, 0.3, 0.6, 0.85, 0.95, 0.99])  # progress 1 - tau from 0.98 down to 0.01
    plain = ConditionalModel(net, process, 1, w).denoiser(y)
    with torch.no_grad():
        expected = plain(x, t)
        for settings in ({"slg_scale": 0.0, "slg_layers": (1,)}, {"slg_scale": 2.5, "slg_layers": ()}):
            off = SkipLayerGuidance.of(type("S", (), {**settings, "slg_start": 0.0, "slg_end": 1.0}))
            assert off is None
            assert torch.equal(ConditionalModel(net, process, 1, w, off).denoiser(y)(x, t), expected)

        slg = SkipLayerGuidance(2.5, (1, 2), start=0.1, end=0.8)
        out = ConditionalModel(net, process, 1, w, slg).denoiser(y)(x, t)
        alpha, sigma = process.marginal(t)
        on = slg.active(alpha, sigma)
        assert on.tolist() == [False, True, True, True, False, False]
        asked = y if w else torch.full_like(y, 3)
        difference = net(x, t, asked) - net(x, t, asked, skip_layers=(1, 2))
        assert torch.equal(out[~on], expected[~on])
        assert torch.allclose(out[on, :1], expected[on, :1] + 2.5 * difference[on, :1], atol=1e-5)
        assert torch.equal(out[on, 1:], expected[on, 1:])  # a learned variance is left as it is


def test_skip_layer_guidance_on_a_unet_is_refused():
    unet = UNet(UNetConfig(base_channels=8, channel_mult=(1,), attention_resolutions=()), 8, 1)
    with pytest.raises(ConfigError, match="skip-layer guidance skips transformer blocks, but this model is a U-Net"):
        ConditionalModel(unet, Identity(), 1, 1.0, SkipLayerGuidance(2.5, (1,)))


def test_bad_transformer_params_are_one_line_naming_the_key():
    raw = dit_params()
    raw["datasets"]["digits"]["dit"]["patch_size"] = 3
    with pytest.raises(ConfigError, match="dit.patch_size 3 does not divide the image size 8"):
        parse_params(raw)
    raw = dit_params()
    raw["datasets"]["digits"]["network"] = "unet"
    raw["models"]["ddpm"]["network"] = "dit"
    raw["datasets"]["digits"]["dit"]["patch_size"] = 3
    with pytest.raises(ConfigError, match="models.ddpm on datasets.digits: the transformer .* dit.patch_size 3"):
        parse_params(raw)
    raw = dit_params()
    raw["sample"].update(slg_scale=2.5, slg_layers=[1, 3])
    with pytest.raises(ConfigError, match=r"sample.slg_layers holds \[3\], but the transformer has blocks 0..2"):
        parse_params(raw)
    raw["datasets"]["digits"]["network"] = "unet"
    with pytest.raises(ConfigError, match="models.ddpm on datasets.digits: sample.slg_scale 2.5 .* is a U-Net"):
        parse_params(raw)
    raw["sample"].update(slg_start=0.5, slg_end=0.2)
    with pytest.raises(ConfigError, match="sample.slg_start 0.5 must be below sample.slg_end 0.2"):
        parse_params(raw)
    raw = dit_params()
    raw["datasets"]["digits"]["dit"]["hidden_size"] = 18
    with pytest.raises(ConfigError, match="hidden_size 18 cannot be split into dit.num_heads = 4"):
        raw["datasets"]["digits"]["dit"]["num_heads"] = 4
        parse_params(raw)


@pytest.mark.parametrize("family", ["ddpm", "vlb", "vdm", "flow"])
def test_every_family_trains_on_the_transformer_and_its_checkpoint_loads(family, tmp_path):
    run = parse_params(dit_params(family)).run("digits", family)
    images = np.random.default_rng(0).integers(0, 256, (32, 1, 8, 8), dtype=np.uint8)
    trainer = Trainer(run, images, CPU)
    for _ in range(3):
        trainer.train_step()
    assert trainer.window_n == 3 and trainer.skipped == 0
    assert all(np.isfinite(v) for v in trainer.window.values())
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in trainer.model.final.linear.parameters())
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, run, 1, 3, trainer.model, trainer.ema.module, trainer.process)
    ckpt = load_checkpoint(path, CPU)
    assert isinstance(ckpt.ema, DiT)
    for (name, a), b in zip(trainer.ema.module.state_dict().items(), ckpt.ema.state_dict().values()):
        assert torch.equal(a, b), name
