"""How well samples follow their prompts: the CLIP score (Hessel et al. 2021) under the in-domain CLIP of the text
encoder a model was trained with, 100 max(cos(image, prompt), 0) per image, averaged per draw; and, for prompts that
ask for an attribute's word, how close the measured attribute comes to the one asked for."""

from __future__ import annotations

import numpy as np
import torch

from ..captions import WORDS, AttributePrompt, Captions, measure
from ..runtime.text_encoding import TextEncoder
from ..tensors import to_model_range
from ..text import cycled


def prompts_of_draws(cycle: list[str], num_samples: int, draws: int) -> list[str]:
    """The prompt of every image of ``draws`` draws of ``num_samples``: ``cycle`` in turn within each draw."""
    return cycled(cycle, num_samples) * draws


def clip_scores(encoder: TextEncoder, images: np.ndarray, prompts: list[str], batch_size: int = 500) -> np.ndarray:
    """CLIP score [N] of uint8 images [N, C, H, W] against their ``prompts``."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(images[start:start + batch_size]))
        out.append(encoder.score(x, prompts[start:start + batch_size]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def requested_values(captions: Captions, train_labels: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """[num_classes, 4] of attribute ``name``: the median of the training images of each class in each of its
    terciles (what a word asks for), then the class's median."""
    values = captions.train_attributes[:, captions.names.index(name)]
    levels = captions.levels(name, train_labels)
    out = np.zeros((num_classes, 4))
    for c in range(num_classes):
        mine, theirs = values[train_labels == c], levels[train_labels == c]
        if not len(mine):
            continue
        out[c] = [np.median(mine[theirs == k]) if (theirs == k).any() else np.median(mine) for k in range(3)] + [
            np.median(mine)]
    return out


def attribute_adherence(images: np.ndarray, asked: list[AttributePrompt], captions: Captions,
                        train_labels: np.ndarray, held_out: set[tuple[int, str]] = frozenset()) -> dict[str, float]:
    """How well uint8 images [N, C, H, W], image i drawn for ``asked[i]``, have the attribute their prompt asks
    for, each measured as the captions measure it (:func:`~diffusionlab.captions.measure`) and taken relative to
    the median of its class in the training split:

    - ``<attribute>_r``: Pearson's r between the requested value (the median of the class's training images with
      the word) and the measured one;
    - ``<attribute>_error``: the mean absolute difference between them (the attribute's unit);
    - ``<attribute>_gain``: the fraction of the requested departure from the class median that the samples reach,
      sum s_i (measured_i - m) / sum |requested_i - m| over the words of the outer terciles (s_i: the side asked
      for); 1 is as far as the data, 0 ignores the word;

    over the prompts of combinations seen in training, and ``<attribute>_gain_held_out`` over those of
    ``held_out`` (class, word) combinations."""
    if len(asked) != len(images):
        raise ValueError(f"{len(asked)} prompts for {len(images)} images")
    _, measured = measure(images)
    num_classes = max(len(c) for c in captions.cuts.values())
    out = {}
    for name in dict.fromkeys(a.attribute for a in asked):
        table = requested_values(captions, train_labels, name, num_classes)
        mine = [i for i, a in enumerate(asked) if a.attribute == name]
        labels = np.array([asked[i].label for i in mine])
        wanted = table[labels, [asked[i].level for i in mine]] - table[labels, 3]
        got = measured[mine, captions.names.index(name)] - table[labels, 3]
        unseen = np.array([(asked[i].label, WORDS[name][asked[i].level]) in held_out for i in mine])
        outer = np.array([asked[i].level != 1 for i in mine])
        seen = ~unseen
        if seen.sum() > 1 and np.std(wanted[seen]) > 0 and np.std(got[seen]) > 0:
            out[f"{name}_r"] = float(np.corrcoef(wanted[seen], got[seen])[0, 1])
        out[f"{name}_error"] = float(np.abs(got[seen] - wanted[seen]).mean()) if seen.any() else float("nan")
        for key, keep in ((f"{name}_gain", seen & outer), (f"{name}_gain_held_out", unseen & outer)):
            if keep.any() and np.abs(wanted[keep]).sum() > 0:
                out[key] = float((np.sign(wanted[keep]) * got[keep]).sum() / np.abs(wanted[keep]).sum())
    return out


def real_images_for(asked: list[AttributePrompt], captions: Captions, train_images: np.ndarray,
                    train_labels: np.ndarray, seed: int) -> np.ndarray:
    """For each prompt of ``asked``, a training image of its class with its word, drawn at random: the samples of a
    model that follows every prompt as the data do, whose adherence is the ceiling a model's is read against."""
    rng = np.random.default_rng(seed)
    levels = {name: captions.levels(name, train_labels) for name in dict.fromkeys(a.attribute for a in asked)}
    pools: dict[tuple[int, str, int], np.ndarray] = {}
    picks = []
    for a in asked:
        key = (a.label, a.attribute, a.level)
        if key not in pools:
            pools[key] = np.flatnonzero((train_labels == a.label) & (levels[a.attribute] == a.level))
        if not len(pools[key]):
            raise ValueError(f"no training image of class {a.label} has the word '{a.prompt}' asks for")
        picks.append(rng.choice(pools[key]))
    return train_images[picks]
