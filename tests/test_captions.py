"""Captions and the attributes they are written from, on drawn images of known thickness, slant and colour."""

import numpy as np
import pytest

from diffusionlab.captions import (COLOUR_ATTRIBUTES, GRAY_ATTRIBUTES, WORDS, AttributePrompt, attribute_prompts, colour_attributes, colour_name,
                                   gray_attributes, hold_out, load_captions, parse_held_out, prompt_class,
                                   save_captions, slant, thickness, write_captions)
from diffusionlab.errors import ConfigError


def bar(width: int, length: int = 20, shear: float = 0.0, size: int = 32) -> np.ndarray:
    """A vertical bar [1, 1, size, size] of ``width`` pixels and ``length`` rows, each row shifted right by
    ``shear`` per row upwards."""
    image = np.zeros((size, size), np.uint8)
    top = (size - length) // 2
    for row in range(top, top + length):
        left = int(round(size / 2 - width / 2 + shear * (top + length / 2 - row)))
        image[row, left:left + width] = 255
    return image[None, None]


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_the_thickness_of_an_upright_bar_is_its_width(width):
    assert thickness(bar(width)).item() == pytest.approx(width)


def test_thicker_strokes_measure_thicker_whatever_their_slant():
    widths = [thickness(bar(w, shear=0.3)).item() for w in (1, 2, 3, 4)]
    assert widths == sorted(widths) and widths[-1] > 2 * widths[0]


@pytest.mark.parametrize("shear", [-0.4, 0.0, 0.25, 0.5])
def test_the_slant_of_a_sheared_bar_is_its_shear(shear):
    assert slant(bar(3, shear=shear)).item() == pytest.approx(shear, abs=0.03)


def test_size_and_centre_of_a_bar():
    _, _, size, x, y = gray_attributes(bar(4, length=16))[0]
    assert size == pytest.approx(0.5) and x == pytest.approx(0.5, abs=0.02) and y == pytest.approx(0.5, abs=0.02)


def test_colour_brightness_hue_and_saturation_of_flat_images():
    red = np.zeros((1, 3, 8, 8), np.uint8)
    red[:, 0] = 255
    gray = np.full((1, 3, 8, 8), 128, np.uint8)
    (brightness, hue, sat), (gray_brightness, _, gray_sat) = colour_attributes(np.concatenate([red, gray]))
    assert brightness == pytest.approx(0.299) and hue == pytest.approx(0.0) and sat == pytest.approx(1.0)
    assert gray_brightness == pytest.approx(128 / 255) and gray_sat == 0.0
    assert [colour_name(h, 1.0) for h in (10, 110, 235, 355)] == ["red", "green", "blue", "red"]
    assert colour_name(120, 0.1) == "gray"


def test_captions_word_the_terciles_of_each_class_and_keep_the_numbers(tmp_path):
    thin_class = [bar(w, shear=s) for w in (1, 2, 3) for s in (-0.4, 0.0, 0.4)]
    thick_class = [bar(w, shear=s) for w in (3, 4, 6) for s in (-0.4, 0.0, 0.4)]
    images, labels = np.concatenate(thin_class + thick_class), np.repeat([0, 8], 9)
    captions = write_captions(images, labels, images[:2], labels[:2], [str(i) for i in range(10)])
    assert captions.train[0][0] == "a 0" and captions.train[9][0] == "an 8"
    assert captions.train[0][1] == "a thin left-slanted 0" and captions.train[16][1] == "a thick upright 8"
    # a width of 3 is thick for a 0 and thin for an 8: the words are relative to the class
    assert captions.train[7][2] == "a thick 0" and captions.train[9][2] == "a thin 8"
    assert captions.train[13][3] == "an upright 8"
    for name, phrasing in (("thickness", 2), ("slant", 3)):  # the terciles the words were written from
        words = [WORDS[name][k] for k in captions.levels(name, labels)]
        assert words == [c[phrasing].split()[1] for c in captions.train]
    assert captions.train_attributes.shape == (18, 5)
    save_captions(captions, tmp_path)
    loaded = load_captions(tmp_path)
    assert loaded.train == captions.train and np.array_equal(loaded.test_attributes, captions.test_attributes)
    assert loaded.cuts == captions.cuts and len(loaded.cuts["slant"]) == 10


def test_attribute_prompts_ask_every_word_of_every_class_as_the_captions_phrase_it():
    asked = attribute_prompts(["0", "1", "8"], GRAY_ATTRIBUTES)
    assert [a.prompt for a in asked[:4]] == ["a thin 0", "a thin 1", "a thin 8", "a medium 0"]
    assert len(asked) == 3 * 6 and asked[-1] == AttributePrompt("a right-slanted 8", 2, "slant", 2)
    assert {a.prompt for a in asked if a.attribute == "slant" and a.level == 1} == {"an upright 0", "an upright 1",
                                                                                    "an upright 8"}
    colour = attribute_prompts(["cat"], COLOUR_ATTRIBUTES)
    assert [a.prompt for a in colour] == ["a dark photo of a cat", "a dim photo of a cat", "a bright photo of a cat"]


def test_held_out_combinations_leave_no_caption_that_pairs_the_word_with_the_class():
    captions = [["a 7", "a thick upright 7", "a thick 7", "an upright 7", "the digit seven written thick and upright"],
                ["a 1", "a thick upright 1", "a thick 1", "an upright 1", "the digit one written thick and upright"]]
    kept = hold_out(captions, np.array([7, 1]), parse_held_out(["thick 7"], [str(i) for i in range(10)]))
    assert kept[0] == ["a 7", "an upright 7"] and kept[1] == captions[1]
    with pytest.raises(ConfigError, match="'fat 7' is not '<word> <class>'.*thick"):
        parse_held_out(["fat 7"], [str(i) for i in range(10)])
    with pytest.raises(ConfigError, match="'thick 11'"):
        parse_held_out(["thick 11"], [str(i) for i in range(10)])


def test_own_captions_take_the_place_of_the_written_ones_and_must_match_the_images(tmp_path):
    images, labels = np.concatenate([bar(2), bar(3)]), np.array([0, 1])
    own = tmp_path / "captions.txt"
    own.write_text("first\nsecond\nthird\n")
    captions = write_captions(images, labels, images[:1], labels[:1], ["0", "1"], own)
    assert captions.train == [["first"], ["second"]] and captions.test == [["third"]]
    own.write_text("only one\n")
    with pytest.raises(ConfigError, match="has 1 lines but the dataset has 3 images"):
        write_captions(images, labels, images[:1], labels[:1], ["0", "1"], own)


def test_the_class_a_prompt_names_by_its_name_or_its_digit_word():
    digits = [str(i) for i in range(10)]
    assert prompt_class("a thick right-slanted 7", digits) == 7
    assert prompt_class("the digit seven written thin", digits) == 7
    assert prompt_class("a 7 and a 1", digits) == -1 and prompt_class("a thick stroke", digits) == -1
    assert prompt_class("a photo of an orange cat", ["airplane", "cat", "dog"]) == 1


def test_the_grid_of_a_text_model_puts_each_prompt_on_a_row_of_its_own():
    from diffusionlab.pipeline.sample import prompt_rows

    prompts = ["a 1", "a 7", "a 3"] * 3 + ["a 1"]
    order, per_row = prompt_rows(prompts, 10)
    assert per_row == 3 and [prompts[i] for i in order] == ["a 1"] * 3 + ["a 7"] * 3 + ["a 3"] * 3


def adherence_of(faithful: bool, held_out=frozenset()):
    """The adherence of samples that are training images with the word asked (``faithful``: what the evaluation
    reads a model's against) or any image of the class, of bars of random width and shear in two classes."""
    from diffusionlab.evaluation.prompts import attribute_adherence, real_images_for

    rng = np.random.default_rng(0)
    images = np.concatenate([bar(int(rng.integers(1, 7)), shear=float(rng.uniform(-0.5, 0.5))) for _ in range(180)])
    labels = np.repeat([0, 1], 90)
    captions = write_captions(images, labels, images[:2], labels[:2], ["0", "1"])
    asked = attribute_prompts(["0", "1"], GRAY_ATTRIBUTES) * 20
    if faithful:
        samples = real_images_for(asked, captions, images, labels, seed=0)
    else:
        samples = np.stack([images[rng.choice(np.flatnonzero(labels == a.label))] for a in asked])
    return attribute_adherence(samples, asked, captions, labels, held_out)


def test_samples_with_the_word_asked_adhere_and_samples_that_ignore_it_do_not():
    good, blind = adherence_of(True), adherence_of(False)
    for name in ("thickness", "slant"):
        assert good[f"{name}_r"] > 0.7 and 0.6 < good[f"{name}_gain"] < 1.4
        assert abs(blind[f"{name}_r"]) < 0.3 and abs(blind[f"{name}_gain"]) < 0.3
        assert good[f"{name}_error"] < blind[f"{name}_error"]


def test_held_out_combinations_are_scored_apart_from_the_seen_ones():
    scores = adherence_of(True, held_out={(0, "thick")})
    assert 0.6 < scores["thickness_gain_held_out"] < 1.4 and "slant_gain_held_out" not in scores
