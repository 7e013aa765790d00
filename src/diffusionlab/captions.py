"""Captions for every image, written from its label and attributes measured on its pixels.

Grayscale digits (digits, MNIST): the stroke thickness, the slant, the size and the position of the digit.
Colour photos (CIFAR-10): the dominant colour and the brightness. Each attribute is kept as a number
(``attributes`` [N, K]) and put into words by the terciles of its class in the training split, so that each word
holds about a third of the images of each class ("a thick 1" is thick for a 1; size and position stay numbers: the
digits of a dataset fill its frame alike); every image gets several phrasings, among them the class alone ("a 7").
:func:`attribute_prompts` asks for each word of each class, which the evaluation measures the samples against.

How each attribute is measured, on intensities I in [0, 1] (the ink of a digit, white on black):

- **thickness** (pixels): the digit's mask is I >= 0.5 max I, of area A and boundary length P (edges between a mask
  pixel and a background pixel, the image border included). A bar of width w and length L has A = w L and
  P = 2 (w + L), so w is the smaller root of w^2 - (P / 2) w + A = 0; the same root is the thickness of any mask
  ("the width of the rectangle with this area and perimeter"), exact for straight bars.
- **slant**: the shear of the ink's second moments, -cov(x, y) / var(y) with x to the right and y downwards,
  weighted by I: how far the ink moves to the right per pixel upwards (0 upright, > 0 leaning right; a bar sheared
  by s has slant s).
- **size**: the height of the mask's bounding box over the image height.
- **x, y**: the ink's centre of mass over the image side (0.5: centred).
- **brightness** (colour): the mean luma 0.299 R + 0.587 G + 0.114 B.
- **hue**, **saturation** (colour): those of the mean colour of the image's most saturated half of pixels; the
  colour word is the hue's name, or "gray" when that saturation is under 0.2.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .io import read_json, save_npy, write_json

GRAY_ATTRIBUTES = ("thickness", "slant", "size", "x", "y")
COLOUR_ATTRIBUTES = ("brightness", "hue", "saturation")
CAPTIONS_FILE = "captions.json"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HUES = (("red", 0.0), ("orange", 30.0), ("yellow", 60.0), ("green", 120.0), ("cyan", 180.0), ("blue", 240.0),
        ("purple", 280.0), ("pink", 330.0), ("red", 360.0))
"""Colour names at their hue (degrees); a hue takes the nearest name."""
WORDS = {
    "thickness": ("thin", "medium", "thick"),
    "slant": ("left-slanted", "upright", "right-slanted"),
    "brightness": ("dark", "dim", "bright"),
}
"""The word of each tercile (low, middle, high) of an attribute."""


def _intensity(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 1, H, W] -> float [N, H, W] in [0, 1]."""
    return images[:, 0].astype(np.float64) / 255.0


def _mask(ink: np.ndarray) -> np.ndarray:
    peak = ink.reshape(len(ink), -1).max(axis=1)[:, None, None]
    return (ink >= 0.5 * peak) & (peak > 0)


def thickness(images: np.ndarray) -> np.ndarray:
    """Stroke width in pixels of uint8 [N, 1, H, W] digits: the smaller root of w^2 - (P/2) w + A = 0 for the
    mask's area A and boundary length P [N]."""
    mask = _mask(_intensity(images))
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    perimeter = (np.abs(np.diff(padded.astype(np.int8), axis=1)).sum(axis=(1, 2))
                 + np.abs(np.diff(padded.astype(np.int8), axis=2)).sum(axis=(1, 2))).astype(np.float64)
    half = perimeter / 2
    return (half - np.sqrt(np.maximum(half ** 2 - 4 * area, 0.0))) / 2


def _moments(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mass, centre (x, y) and the covariances cov(x, y), var(y) of the ink [N, H, W]."""
    _, h, w = ink.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = ink.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    cx = (ink * xs).sum(axis=(1, 2)) / safe
    cy = (ink * ys).sum(axis=(1, 2)) / safe
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    cov = (ink * dx * dy).sum(axis=(1, 2)) / safe
    var_y = (ink * dy * dy).sum(axis=(1, 2)) / safe
    return mass, cx, cy, cov, var_y


def slant(images: np.ndarray) -> np.ndarray:
    """-cov(x, y) / var(y) of uint8 [N, 1, H, W] digits' ink [N]: pixels to the right per pixel up."""
    _, _, _, cov, var_y = _moments(_intensity(images))
    return -cov / np.where(var_y > 0, var_y, 1.0)


def gray_attributes(images: np.ndarray) -> np.ndarray:
    """[N, 5]: thickness, slant, size, x, y (:data:`GRAY_ATTRIBUTES`) of uint8 [N, 1, H, W] digits."""
    ink = _intensity(images)
    _, h, w = ink.shape
    mask = _mask(ink)
    rows = mask.any(axis=2)
    top = np.where(rows.any(axis=1), rows.argmax(axis=1), 0)
    bottom = np.where(rows.any(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1), -1)
    _, cx, cy, _, _ = _moments(ink)
    return np.stack([thickness(images), slant(images), (bottom - top + 1) / h, (cx + 0.5) / w, (cy + 0.5) / h], 1)


def _hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue (degrees) and saturation of colours [..., 3] in [0, 1]."""
    top, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = top - low
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = np.moveaxis(rgb, -1, 0)
    hue = np.select([top == r, top == g], [((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4) * 60.0
    return np.where(chroma > 0, hue, 0.0), np.where(top > 0, chroma / np.where(top > 0, top, 1.0), 0.0)


def colour_attributes(images: np.ndarray) -> np.ndarray:
    """[N, 3]: brightness, hue (degrees), saturation (:data:`COLOUR_ATTRIBUTES`) of uint8 [N, 3, H, W] images."""
    rgb = np.moveaxis(images.astype(np.float64) / 255.0, 1, -1).reshape(len(images), -1, 3)
    brightness = rgb @ np.array([0.299, 0.587, 0.114])
    _, saturation = _hue_saturation(rgb)
    keep = saturation >= np.median(saturation, axis=1, keepdims=True)
    mean = (rgb * keep[..., None]).sum(axis=1) / keep.sum(axis=1)[:, None]
    hue, sat = _hue_saturation(mean)
    return np.stack([brightness.mean(axis=1), hue, sat], axis=1)


def colour_name(hue: float, saturation: float) -> str:
    """The nearest of :data:`HUES` to ``hue`` (degrees), or gray when ``saturation`` is under 0.2."""
    if saturation < 0.2:
        return "gray"
    return min(HUES, key=lambda named: abs(named[1] - hue))[0]


def measure(images: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The attribute names and values [N, K] of uint8 [N, C, H, W] images: gray or colour by C."""
    if images.shape[1] == 1:
        return GRAY_ATTRIBUTES, gray_attributes(images)
    if images.shape[1] == 3:
        return COLOUR_ATTRIBUTES, colour_attributes(images)
    raise ValueError(f"images of {images.shape[1]} channels have no attributes; expected 1 (gray) or 3 (RGB)")


def prompt_class(prompt: str, class_names: list[str]) -> int:
    """The class a prompt names: the one class whose name (or, for digits, its word: "seven") is among its words;
    -1 when it names none or several."""
    words = set(re.findall(r"[\w-]+", prompt.lower()))
    digits = list(class_names) == [str(i) for i in range(10)]
    found = {i for i, name in enumerate(class_names) if name.lower() in words or (digits and DIGIT_WORDS[i] in words)}
    return found.pop() if len(found) == 1 else -1


def tercile(value: float, cuts: tuple[float, float]) -> int:
    """0, 1 or 2: the tercile of ``value`` among the training images of its class (cuts: their 1/3 and 2/3
    quantiles)."""
    return int(value > cuts[0]) + int(value > cuts[1])


def tercile_word(name: str, value: float, cuts: tuple[float, float]) -> str:
    """The word of ``value``'s tercile of attribute ``name``."""
    return WORDS[name][tercile(value, cuts)]


def class_cuts(values: np.ndarray, labels: np.ndarray, num_classes: int) -> list[tuple[float, float]]:
    """The 1/3 and 2/3 quantiles of ``values`` [N] within each class (0, 0 for a class without images)."""
    return [tuple(float(q) for q in np.quantile(values[labels == c], [1 / 3, 2 / 3])) if (labels == c).any()
            else (0.0, 0.0) for c in range(num_classes)]


@dataclass
class Captions:
    """Every image's phrasings and attributes, for one split pair."""

    names: tuple[str, ...]
    """The attributes measured (:data:`GRAY_ATTRIBUTES` or :data:`COLOUR_ATTRIBUTES`)."""
    cuts: dict[str, list[tuple[float, float]]]
    """Each worded attribute's terciles within each class of the training split."""
    train: list[list[str]]
    test: list[list[str]]
    train_attributes: np.ndarray
    test_attributes: np.ndarray
    source: str = "measured"
    """``measured`` (written here) or the path of a user's captions file."""

    def levels(self, name: str, labels: np.ndarray) -> np.ndarray:
        """The tercile (0, 1, 2) of attribute ``name`` of every training image within its class (``labels``)."""
        values = self.train_attributes[:, self.names.index(name)]
        cuts = np.asarray(self.cuts[name])[labels]
        return (values > cuts[:, 0]).astype(np.int64) + (values > cuts[:, 1])


def article(word: str) -> str:
    """The indefinite article before ``word``: an before a vowel sound (8 included), else a."""
    return "an" if word[:1].lower() in "aeiou8" else "a"


def one_word(name: str, word: str, class_name: str) -> str:
    """The phrasing that asks for one word of attribute ``name`` of a class: "a thick 7", "an upright 7", "a dark
    photo of a cat"."""
    if name == "brightness":
        return f"a {word} photo of {article(class_name)} {class_name}"
    return f"{article(word)} {word} {class_name}"


def phrasings(label: int, class_name: str, values: dict[str, float], cuts: dict[str, tuple[float, float]],
              colour: bool) -> list[str]:
    """The phrasings of one image (``cuts``: its class's terciles), the class alone first."""
    if colour:
        hue_word = colour_name(values["hue"], values["saturation"])
        light = tercile_word("brightness", values["brightness"], cuts["brightness"])
        return [f"a photo of {article(class_name)} {class_name}",
                f"a photo of {article(hue_word)} {hue_word} {class_name}",
                one_word("brightness", light, class_name),
                f"a {light} photo of {article(hue_word)} {hue_word} {class_name}"]
    thick = tercile_word("thickness", values["thickness"], cuts["thickness"])
    lean = tercile_word("slant", values["slant"], cuts["slant"])
    return [f"{article(class_name)} {class_name}", f"a {thick} {lean} {class_name}",
            one_word("thickness", thick, class_name), one_word("slant", lean, class_name),
            f"the digit {DIGIT_WORDS[label]} written {thick} and {lean}"]


@dataclass(frozen=True)
class AttributePrompt:
    """A prompt that asks for one word of one attribute of one class."""

    prompt: str
    label: int
    attribute: str
    level: int
    """The word's tercile: 0 (thin, left-slanted, dark), 1 or 2."""


def attribute_prompts(class_names: list[str], names: tuple[str, ...]) -> list[AttributePrompt]:
    """Every class asked for with every word of every worded attribute of ``names`` (a :class:`Captions`'s), a
    phrasing of the captions each (:func:`one_word`), the classes in turn within each word (a grid of a row per
    word, a column per class): the prompts whose samples the evaluation measures against what they ask."""
    return [AttributePrompt(one_word(name, word, class_name), label, name, level)
            for name in names if name in WORDS for level, word in enumerate(WORDS[name])
            for label, class_name in enumerate(class_names)]


def parse_held_out(combinations: list[str] | tuple[str, ...], class_names: list[str]) -> set[tuple[int, str]]:
    """``["thick 7", "left-slanted 1"]`` -> {(7, "thick"), (1, "left-slanted")}: each an attribute word then a class
    name; anything else is one error naming the words and classes there are."""
    words = {w for ws in WORDS.values() for w in ws}
    out = set()
    for text in combinations:
        parts = text.split()
        if len(parts) != 2 or parts[0] not in words or parts[1] not in class_names:
            raise ConfigError(f"text_encoder.held_out '{text}' is not '<word> <class>': the words are "
                              f"{', '.join(sorted(words))}; the classes {', '.join(class_names)}")
        out.add((class_names.index(parts[1]), parts[0]))
    return out


def hold_out(captions: list[list[str]], labels: np.ndarray, combinations: set[tuple[int, str]]
             ) -> list[list[str]]:
    """``captions`` with every phrasing of an image of a held-out (class, word) combination that holds the word
    dropped, so that no training caption pairs the word with the class (the image keeps its other phrasings,
    the class alone among them)."""
    if not combinations:
        return captions
    out = []
    for phrasings_of, y in zip(captions, labels):
        drop = {w for c, w in combinations if c == int(y)}
        kept = [p for p in phrasings_of if not drop & set(p.split())]
        out.append(kept or phrasings_of[:1])
    return out


def write_captions(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                   test_labels: np.ndarray, class_names: list[str], own: str | Path | None = None) -> Captions:
    """Captions of both splits: measured, or a user's file ``own`` (one caption per line: the training images
    in order, then the test images); the attributes are measured either way."""
    names, train_values = measure(train_images)
    _, test_values = measure(test_images)
    worded = [n for n in names if n in WORDS]
    cuts = {n: class_cuts(train_values[:, names.index(n)], train_labels, len(class_names)) for n in worded}
    colour = train_images.shape[1] == 3
    if own is not None:
        lines = Path(own).read_text().splitlines()
        expected = len(train_images) + len(test_images)
        if len(lines) != expected:
            raise ConfigError(f"data.captions {own} has {len(lines)} lines but the dataset has {expected} images "
                              f"({len(train_images)} train, then {len(test_images)} test): one caption per line")
        split = len(train_images)
        return Captions(names, cuts, [[s] for s in lines[:split]], [[s] for s in lines[split:]], train_values,
                        test_values, str(own))

    def write(values: np.ndarray, labels: np.ndarray) -> list[list[str]]:
        return [phrasings(int(y), class_names[int(y)], dict(zip(names, row)), {n: c[int(y)] for n, c in cuts.items()},
                          colour) for row, y in zip(values, labels)]

    return Captions(names, cuts, write(train_values, train_labels), write(test_values, test_labels), train_values,
                    test_values)


def save_captions(captions: Captions, folder: Path) -> None:
    """``captions.json`` (phrasings, names, cuts) and ``{split}_attributes.npy`` in a prepared dataset's folder."""
    record = asdict(captions)
    for split in ("train", "test"):
        save_npy(folder / f"{split}_attributes.npy", record.pop(f"{split}_attributes"))
    write_json(folder / CAPTIONS_FILE, record)


def load_captions(folder: str | Path) -> Captions:
    folder = Path(folder)
    if not (folder / CAPTIONS_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no captions; re-run its prepare stage (dvc repro prepare@...)")
    record = read_json(folder / CAPTIONS_FILE)
    arrays = {f"{s}_attributes": np.load(folder / f"{s}_attributes.npy") for s in ("train", "test")}
    return Captions(tuple(record["names"]), {k: [tuple(c) for c in v] for k, v in record["cuts"].items()},
                    record["train"],
                    record["test"], source=record["source"], **arrays)
