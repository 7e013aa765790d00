"""Class-conditional networks and classifier-free guidance (Ho & Salimans 2022)."""

import copy

import numpy as np
import pytest
import torch
import yaml

from diffusionlab.config.params import parse_params
from diffusionlab.config.sampling import SampleConfig
from diffusionlab.errors import ConfigError
from diffusionlab.nn.unet import UNet, UNetConfig
from diffusionlab.runtime.training import Trainer, drop_condition
from diffusionlab.sampling.generation import generate
from diffusionlab.sampling.guidance import ConditionalModel, guide, guided_network, requested_labels
from diffusionlab.sampling.samplers import make_sampler

from test_training import ROOT, TINY_NET

CPU = torch.device("cpu")


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                            dropout=0.0), image_size=8, in_channels=1, out_channels=2, num_classes=3).eval()
    for p in model.parameters():  # leave the zero-initialised output layers: outputs must depend on the label
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_guide_is_the_unconditional_output_at_w_0_the_conditional_at_w_1_and_extrapolates_beyond():
    cond, uncond = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    assert torch.equal(guide(cond, uncond, 0.0, 1)[:, :1], uncond[:, :1])
    assert torch.equal(guide(cond, uncond, 1.0, 1)[:, :1], cond[:, :1])
    assert torch.allclose(guide(cond, uncond, 3.0, 1)[:, :1], 3 * cond[:, :1] - 2 * uncond[:, :1], atol=1e-6)
    assert torch.equal(guide(cond, uncond, 3.0, 1)[:, 1:], cond[:, 1:])  # a learned variance stays conditional


def test_guided_network_evaluates_the_formula_on_the_real_network(net):
    x, t, y = torch.randn(5, 1, 8, 8), torch.randint(0, 50, (5,)), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
        assert not torch.allclose(cond, uncond)
        assert torch.equal(guided_network(net, y, torch.full_like(y, 3), 0.0, 1)(x, t), uncond)
        assert torch.equal(guided_network(net, y, torch.full_like(y, 3), 1.0, 1)(x, t), cond)
        guided = guided_network(net, y, torch.full_like(y, 3), 2.5, 1)(x, t)
    assert torch.allclose(guided[:, :1], uncond[:, :1] + 2.5 * (cond[:, :1] - uncond[:, :1]), atol=1e-5)
    assert torch.allclose(guided[:, 1:], cond[:, 1:], atol=1e-6)
    assert torch.equal(net(x, t), uncond)  # no label is the null label


def test_an_unconditional_network_refuses_labels():
    net = UNet(UNetConfig(base_channels=8, channel_mult=(1,), attention_resolutions=()), 8, 1)
    with pytest.raises(ValueError, match="class_conditional: true"):
        net(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
    labels = torch.arange(10).repeat(2000)
    dropped = drop_condition(labels, torch.full_like(labels, 10), 0.1, torch.Generator().manual_seed(0))
    null = dropped == 10
    assert null.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(dropped[~null], labels[~null])
    assert torch.equal(drop_condition(labels, torch.full_like(labels, 10), 0.0, None), labels)


def test_requested_labels_cycle_through_the_classes_and_reject_unknown_ones():
    assert requested_labels(5, (), 3).tolist() == [0, 1, 2, 0, 1]
    assert requested_labels(4, (7,), 10).tolist() == [7, 7, 7, 7]
    with pytest.raises(ConfigError, match="classes 0..9"):
        requested_labels(4, (10,), 10)


def params_raw(**model):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["digits"].update(copy.deepcopy(TINY_NET))
    raw["models"] = {"ddpm": {"family": "ddpm", "schedule": "linear", "timesteps": 50, **model}}
    raw["pipeline"]["models"] = ["ddpm"]
    return raw


def test_asking_an_unconditional_model_for_classes_is_refused_before_any_work():
    raw = params_raw()
    raw["sample"]["classes"] = [7]
    with pytest.raises(ConfigError, match="models.ddpm is unconditional: set class_conditional: true"):
        parse_params(raw)
    raw["models"]["ddpm"]["class_conditional"] = True
    assert parse_params(raw).sample.classes == (7,)
    raw["sample"]["classes"] = [10]
    with pytest.raises(ConfigError, match=r"digits has classes 0..9"):
        parse_params(raw)


@pytest.mark.parametrize("family", ["ddpm", "vlb"])
def test_guidance_steers_a_class_conditional_model_to_the_class_asked_for(family):
    """Two classes, black and white images: unguided (w = 0) the model draws both whatever was asked;
    conditional (w = 1) mostly the asked-for one, and guided (w = 3) always."""
    model = {"family": family, "class_conditional": True, "label_dropout": 0.2}
    if family == "vlb":
        model = {**model, "schedule": "cosine"}  # learned variance: guidance must keep its channels apart
    raw = params_raw(**model)
    raw["datasets"]["digits"].update(train_steps=300, batch_size=32)
    raw["train"].update(lr=2e-3, warmup_steps=10, ema_decay=0.9)
    assert_guidance_steers(parse_params(raw).run("digits", "ddpm"), "ddim")


def assert_guidance_steers(cfg, sampler_name: str) -> None:
    """Train ``cfg`` on black (class 0) and white (class 1) images and sample 20 steps of ``sampler_name``:
    at w = 0 both kinds whatever was asked, at w = 1 mostly the asked-for one, at w = 3 always."""
    labels = np.arange(64) % 2
    images = np.broadcast_to((labels * 255).astype(np.uint8)[:, None, None, None], (64, 1, 8, 8)).copy()
    result = Trainer(cfg, images, CPU, labels=labels).run(progress=False)
    sampler = make_sampler(SampleConfig(sampler=sampler_name, steps=20), result.process, 20)
    asked = np.arange(40) % 2
    accuracy = {}
    for w in (0.0, 1.0, 3.0):
        model = ConditionalModel(result.ema, result.process, 1, w)
        out = generate(model, sampler, 40, (1, 8, 8), 40, CPU, seed=0, labels=asked).images
        accuracy[w] = ((out.reshape(40, -1).mean(1) > 127.5) == asked).mean()
    assert 0.25 < accuracy[0.0] < 0.75
    assert accuracy[0.0] + 0.15 < accuracy[1.0] <= accuracy[3.0]
    assert accuracy[3.0] >= 0.95


def test_a_conditional_vdm_is_guided_through_its_time_mapping(net):
    from diffusionlab.families.vdm.gamma import make_gamma
    from diffusionlab.families.vdm.process import VDM

    vdm = VDM(make_gamma("fixed", -13.3, 5.0))
    z, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        time_input = vdm.network_time(vdm.gamma(t))
        cond, uncond = net(z, time_input, y), net(z, time_input)
        guided = ConditionalModel(net, vdm, 1, 2.0).denoiser(y)(z, t)
    assert torch.allclose(guided[:, :1], 2 * cond[:, :1] - uncond[:, :1], atol=1e-5)
    assert torch.equal(ConditionalModel(net, vdm, 1, 2.0).denoiser()(z, t), uncond)
