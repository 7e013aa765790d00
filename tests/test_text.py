"""The tokenizer, CLIP's contrastive loss and the text encoder trained on tiny data."""

import math

import numpy as np
import pytest
import torch

from diffusionlab.nn.clip import TextEncoderConfig, contrastive_loss
from diffusionlab.runtime.text_encoding import load_text_encoder, save_text_encoder, train_text_encoder
from diffusionlab.text import PromptTokenizer

CAPTIONS = ["a thick 7", "a thin left-slanted 8", "a 1"]


def test_prompts_are_padded_or_truncated_to_the_fixed_length_and_keep_their_end_token():
    tok = PromptTokenizer.train(CAPTIONS, 6)
    ids = tok(["a thick 7", "a thick thick thick thick thick 7"])
    bos, eos, pad = (tok.tokenizer.token_to_id(t) for t in ("[BOS]", "[EOS]", "[PAD]"))
    assert ids.shape == (2, 6) and ids.dtype == np.int64
    assert ids[0].tolist()[0] == bos and ids[0].tolist()[4:] == [eos, pad]
    assert ids[1, -1] == eos and (ids[1] != pad).all()


def test_the_empty_prompt_and_unknown_words():
    tok = PromptTokenizer.train(CAPTIONS, 5)
    empty, unknown = tok(["", "a ZEBRA"])
    assert empty.tolist() == [2, 3, 0, 0, 0]
    assert unknown[2] == tok.tokenizer.token_to_id("[UNK]") and unknown[1] == tok.tokenizer.token_to_id("a")
    with pytest.raises(ValueError, match="at least 3"):
        PromptTokenizer.train(CAPTIONS, 2)


def test_the_contrastive_loss_is_its_closed_form_on_a_tiny_batch():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    text = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    scale = torch.tensor(math.log(2.0))
    s = 2.0 * (image @ text.T).numpy()
    rows = np.mean([-np.log(np.exp(s[i, i]) / np.exp(s[i]).sum()) for i in range(2)])
    cols = np.mean([-np.log(np.exp(s[i, i]) / np.exp(s[:, i]).sum()) for i in range(2)])
    assert contrastive_loss(image, text, scale).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_after_training_on_tiny_data_matching_pairs_score_above_mismatched_ones(tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((64, 1, 8, 8), np.uint8)
    labels = rng.integers(0, 2, 64)
    images[labels == 0, :, :4] = 255  # class 0: the top half lit, class 1: the bottom half
    images[labels == 1, :, 4:] = 255
    captions = [["a top"] if y == 0 else ["a bottom"] for y in labels]
    cfg = TextEncoderConfig(context_length=4, width=16, depth=1, num_heads=2, image_channels=8, embed_dim=8,
                            steps=60, batch_size=16, lr=3e-3)
    encoder = train_text_encoder(cfg, images, captions)
    x = torch.from_numpy(images[:2 * 8]).float() / 127.5 - 1
    prompts = [c[0] for c in captions[:16]]
    swapped = ["a bottom" if p == "a top" else "a top" for p in prompts]
    assert (encoder.score(x, prompts) > encoder.score(x, swapped)).float().mean() > 0.9
    save_text_encoder(encoder, tmp_path)
    loaded = load_text_encoder(tmp_path)
    assert loaded.digest == encoder.digest
    assert torch.equal(loaded.condition(prompts), encoder.condition(prompts))
    assert loaded.condition(prompts).shape == (16, 1 + 4, 16)


def test_clip_scores_pair_each_image_with_its_prompt_whatever_the_batch():
    from diffusionlab.evaluation.prompts import clip_scores, prompts_of_draws

    assert prompts_of_draws(["a", "b", "c"], 4, 2) == ["a", "b", "c", "a"] * 2
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    cfg = TextEncoderConfig(context_length=4, width=8, depth=1, num_heads=2, image_channels=8, embed_dim=8, steps=2,
                            batch_size=4)
    encoder = train_text_encoder(cfg, images, [["a top"], ["a bottom"]] * 3)
    prompts = ["a top", "a bottom", "a top", "a top", "a bottom", "a bottom"]
    whole = clip_scores(encoder, images, prompts, batch_size=6)
    assert np.allclose(clip_scores(encoder, images, prompts, batch_size=4), whole, atol=1e-4)
    x = torch.from_numpy(images[2:3]).float() / 127.5 - 1
    assert whole[2] == pytest.approx(encoder.score(x, ["a top"]).item(), abs=1e-4)
    assert ((whole >= 0) & (whole <= 100)).all()


def test_a_width_that_the_heads_do_not_split_is_one_line_when_the_params_are_read():
    from diffusionlab.errors import ConfigError
    from diffusionlab.validation import validate

    with pytest.raises(ConfigError, match="text_encoder.width 18 cannot be split into text_encoder.num_heads = 4"):
        validate(TextEncoderConfig, {"width": 18, "num_heads": 4})
