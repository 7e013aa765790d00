"""Text conditioning on both kinds of backbone: the U-Net's cross-attention, the DiT's pooled vector and SD3's
MMDiT; guidance and skip-layer guidance against the empty prompt; training on captions."""

import copy

import numpy as np
import pytest
import torch

from diffusionlab.config.params import parse_params
from diffusionlab.errors import ConfigError
from diffusionlab.nn.clip import TextEncoderConfig
from diffusionlab.nn.dit import DiT, DiTConfig
from diffusionlab.nn.mmdit import MMDiT
from diffusionlab.nn.unet import UNet, UNetConfig
from diffusionlab.runtime.factory import build_network, build_process
from diffusionlab.runtime.text_encoding import train_text_encoder
from diffusionlab.runtime.training import Trainer
from diffusionlab.sampling.guidance import ConditionalModel, SkipLayerGuidance, guided_network

from test_dit import TINY_DIT, Identity, dit_params, perturbed
from test_training import MODELS

TEXT = (1 + 5, 12)  # a pooled vector and 5 token states of width 12
UNET = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.0)


def backbone(kind: str, out_channels: int = 1, text_shape=TEXT):
    if kind == "unet":
        return UNet(UNET, 8, 1, out_channels, text_shape=text_shape)
    return (MMDiT if kind == "mmdit" else DiT)(DiTConfig(**TINY_DIT), 8, 1, out_channels, text_shape=text_shape)


def conditions(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *TEXT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
@pytest.mark.parametrize("out_channels", [1, 2])  # eps (or v, x0, the flow's velocity), and a learned variance
def test_every_backbone_takes_a_prompt_and_the_empty_prompt_is_its_null_condition(kind, out_channels):
    net = perturbed(backbone(kind, out_channels))
    net.set_null_text(conditions(1, seed=5)[0])
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 20, 40]), conditions()
    with torch.no_grad():
        out = net(x, t, y)
        assert out.shape == (3, out_channels, 8, 8)
        assert torch.equal(net(x, t, None), net(x, t, net.null_condition(y)))
        assert not torch.allclose(out, net(x, t, conditions(seed=1)))  # the prompt reaches the output


@pytest.mark.parametrize("kind", ["unet", "dit", "mmdit"])
def test_guidance_against_the_empty_prompt_is_exact_at_w_0_and_1(kind):
    net = perturbed(backbone(kind, 2))
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 20, 40]), conditions()
    null = net.null_condition(y)
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, null)
        assert torch.equal(guided_network(net, y, null, 0.0, 1)(x, t), uncond)
        assert torch.equal(guided_network(net, y, null, 1.0, 1)(x, t), cond)
        guided = guided_network(net, y, null, 3.0, 1)(x, t)
    assert torch.allclose(guided[:, :1], uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1]), atol=1e-5)
    assert torch.allclose(guided[:, 1:], cond[:, 1:], atol=1e-5)  # a learned variance: the conditional one


def test_skip_layer_guidance_on_the_mmdit_off_is_plain_guidance_and_on_skips_joint_blocks():
    net, process = perturbed(backbone("mmdit")), Identity()
    x, y, t = torch.randn(2, 1, 8, 8), conditions(2), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        plain = ConditionalModel(net, process, 1, 2.0).denoiser(y)(x, t)
        assert SkipLayerGuidance.of(type("S", (), {"slg_scale": 2.5, "slg_layers": (), "slg_start": 0.0,
                                                   "slg_end": 1.0})) is None
        never = SkipLayerGuidance(2.5, (1,), start=0.99, end=1.0)
        assert torch.equal(ConditionalModel(net, process, 1, 2.0, never).denoiser(y)(x, t), plain)
        on = ConditionalModel(net, process, 1, 2.0, SkipLayerGuidance(2.5, (1,), 0.0, 1.0)).denoiser(y)(x, t)
        difference = net(x, t, y) - net(x, t, y, skip_layers=(1,))
    assert torch.allclose(on, plain + 2.5 * difference, atol=1e-5)


def test_a_condition_of_the_wrong_kind_is_one_clear_error():
    text_net, class_net = backbone("dit"), DiT(DiTConfig(**TINY_DIT), 8, 1, num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="text-conditioned and takes a condition"):
        text_net(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional and takes labels"):
        class_net(x, t, conditions(2))
    with pytest.raises(ValueError, match="network: mmdit attends to a prompt's tokens"):
        MMDiT(DiTConfig(**TINY_DIT), 8, 1, num_classes=3)
    with pytest.raises(ValueError, match="on classes or on text, not both"):
        UNet(UNET, 8, 1, num_classes=3, text_shape=TEXT)


def text_params(network: str = "unet") -> dict:
    raw = dit_params("ddpm")
    raw["models"]["ddpm"] = {**MODELS["ddpm"], "text_conditional": True, "label_dropout": 0.25, "network": network}
    raw["text_encoder"] = {"context_length": 8, "width": 12, "depth": 1, "num_heads": 2, "image_channels": 8,
                           "embed_dim": 8, "steps": 5, "batch_size": 8}
    return raw


def test_params_refuse_both_conditions_a_class_to_a_text_model_and_an_mmdit_without_text():
    raw = text_params()
    raw["models"]["ddpm"]["class_conditional"] = True
    with pytest.raises(ConfigError, match="class_conditional and text_conditional are both true"):
        parse_params(raw)
    raw = text_params()
    raw["sample"]["classes"] = [3]
    with pytest.raises(ConfigError, match="models.ddpm is text-conditioned: give it prompts"):
        parse_params(raw)
    raw = text_params()
    raw["models"]["ddpm"]["text_conditional"] = False
    with pytest.raises(ConfigError, match="network: mmdit attends to a prompt's tokens"):
        parse_params({**raw, "models": {**raw["models"], "ddpm": {**raw["models"]["ddpm"], "network": "mmdit"}}})
    run = parse_params(text_params()).run("digits", "ddpm")
    assert run.text_shape == (9, 12) and "captions, text dropout 0.25" in run.model.recipe


@pytest.mark.parametrize("network", ["unet", "mmdit"])
def test_training_on_captions_guides_against_the_empty_prompt_and_drops_captions_at_the_rate(network):
    run = parse_params(text_params(network)).run("digits", "ddpm")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    captions = [[f"a {i % 3}", f"a thick {i % 3}"] for i in range(16)]
    encoder = train_text_encoder(run.text_encoder, images, captions)
    trainer = Trainer(run, images, torch.device("cpu"), text=encoder, captions=captions)
    empty = encoder.condition([""])[0]
    assert torch.equal(trainer.model.null_text, empty) and torch.equal(trainer.ema.module.null_text, empty)
    batch = torch.arange(16).repeat(50)
    y = trainer.condition(batch, len(batch))
    dropped = (y == empty).flatten(1).all(1).float().mean().item()
    assert y.shape == (800, 9, 12) and 0.18 < dropped < 0.32
    trainer.run(progress=False)
    assert trainer.step == run.data.train_steps and np.isfinite(trainer.history[-1]["loss"])
    copy_net = build_network(run, 1, build_process(run))
    copy_net.load_state_dict(copy.deepcopy(trainer.ema.module.state_dict()))
    assert torch.equal(copy_net.null_text, empty)  # a checkpoint guides against the empty prompt on its own


def test_a_text_models_missing_or_stale_encoder_is_one_clear_line(tmp_path, monkeypatch):
    from diffusionlab import paths
    from diffusionlab.errors import StageInputError
    from diffusionlab.io import write_json
    from diffusionlab.pipeline.text_encoder import model_text_encoder
    from diffusionlab.runtime.text_encoding import save_text_encoder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageInputError, match="run the text encoder's stage first: dvc repro text_encoder@digits"):
        model_text_encoder("digits", "flow_text", "cpu")
    marker = paths.text_marker("digits", "flow_text")
    marker.parent.mkdir(parents=True)
    write_json(marker, {"text_encoder": None})
    with pytest.raises(StageInputError, match="ran when flow_text was not text-conditioned"):
        model_text_encoder("digits", "flow_text", "cpu")
    cfg = TextEncoderConfig(context_length=4, width=8, depth=1, num_heads=2, image_channels=8, embed_dim=8, steps=1,
                            batch_size=2)
    encoder = train_text_encoder(cfg, np.zeros((2, 1, 8, 8), np.uint8), [["a 1"], ["a 2"]])
    save_text_encoder(encoder, paths.text_encoder("digits"))
    write_json(marker, {"text_encoder": "another"})
    with pytest.raises(StageInputError, match="is not the one .* names"):
        model_text_encoder("digits", "flow_text", "cpu")
    write_json(marker, {"text_encoder": encoder.digest})
    assert model_text_encoder("digits", "flow_text", "cpu").digest == encoder.digest


def save_tiny_clip_text_model(folder, captions, width=12, positions=16):
    """A randomly initialised CLIPTextModel and a word-level tokenizer of ``captions``, saved as transformers'
    save_pretrained does (what a downloaded model's folder holds), never downloaded."""
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from diffusionlab.text import BOS, EOS, PAD, UNK, PromptTokenizer

    words = PromptTokenizer.train((s for c in captions for s in c), positions)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words.tokenizer, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, unk_token=UNK)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=words.vocab_size, hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=positions,
                            pad_token_id=words.pad_id, bos_token_id=2, eos_token_id=words.eos_id)
    model = CLIPTextModel(config).eval()
    model.save_pretrained(folder)
    return model, words


def test_a_pretrained_clip_text_model_in_a_folder_conditions_the_network_and_travels_by_its_path(tmp_path):
    from diffusionlab.errors import StageInputError
    from diffusionlab.runtime.text_encoding import TextEncoder

    captions = [[f"a {i % 3}", f"a thick {i % 3}"] for i in range(16)]
    folder = tmp_path / "clip-text"
    model, words = save_tiny_clip_text_model(folder, captions)
    raw = text_params()
    raw["text_encoder"]["pretrained"] = str(folder)
    run = parse_params(raw).run("digits", "ddpm")
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    encoder = train_text_encoder(run.text_encoder, images, captions)
    assert encoder.pretrained is not None and encoder.pretrained.path == str(folder)
    ids = torch.from_numpy(words(["a thick 2"])[:, :8])  # [BOS] a thick 2 [EOS] and padding, 8 tokens
    assert torch.equal(torch.from_numpy(encoder.pretrained(["a thick 2"])), ids)
    with torch.no_grad():
        out = model(input_ids=ids)
    expected = torch.cat([out.pooler_output[:, None], out.last_hidden_state], 1)
    got = encoder.condition(["a thick 2"])
    assert got.shape == (1, 9, 12) and torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, encoder.clip.text.condition(encoder.ids(["a thick 2"])))
    trainer = Trainer(run, images, torch.device("cpu"), text=encoder, captions=captions)
    assert torch.equal(trainer.model.null_text, encoder.condition([""])[0])
    trainer.run(progress=False)
    assert np.isfinite(trainer.history[-1]["loss"])

    loaded = TextEncoder.from_state(encoder.state())  # as a checkpoint loads it: from the folder it names
    assert torch.equal(loaded.condition(["a 1"]), encoder.condition(["a 1"]))
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"hidden_act"', '"hidden_act" '))
    with pytest.raises(StageInputError, match="is not the one the text encoder was trained with"):
        TextEncoder.from_state(encoder.state())
    state = encoder.state()
    state["pretrained"]["path"] = str(tmp_path / "gone")
    with pytest.raises(StageInputError, match="gone, which is missing: put it back"):
        TextEncoder.from_state(state)


def test_a_pretrained_folder_that_does_not_fit_is_one_clear_line_before_training(tmp_path):
    captions = [["a 1"], ["a 2"]]
    folder = tmp_path / "clip-text"
    save_tiny_clip_text_model(folder, captions, width=12, positions=16)
    raw = text_params()
    raw["text_encoder"]["pretrained"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nowhere holds no config.json"):
        parse_params(raw)
    raw["text_encoder"]["pretrained"] = str(folder)
    images = np.zeros((2, 1, 8, 8), np.uint8)
    for change, message in (({"width": 16}, "has hidden size 12: set text_encoder.width: 12"),
                            ({"context_length": 20}, "takes at most 16 tokens")):
        cfg = parse_params(raw).text_encoder.model_copy(update=change)
        with pytest.raises(ConfigError, match=message):
            train_text_encoder(cfg, images, captions)
