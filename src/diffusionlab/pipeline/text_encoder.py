"""Stage text_encoder@<dataset>."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..captions import hold_out, load_captions, parse_held_out
from ..config.params import Params
from ..datasets import load_prepared
from ..device import resolve_device
from ..errors import ConfigError, StageInputError
from ..io import atomic_dir, read_json, write_json
from ..runtime.text_encoding import (TextEncoder, class_prompts, load_text_encoder, save_text_encoder,
                                     train_text_encoder)

log = logging.getLogger(__name__)


def text_encoder_stage(params: Params, dataset: str) -> None:
    """Train the tokenizer and the CLIP on the dataset's training images and captions when a model of
    ``pipeline.models`` is text-conditioned, and write for every model which encoder it is trained with
    (``models/<model>.json``: the encoder's digest, or null), so that a change to ``text_encoder`` re-runs the
    stages of the text models only."""
    out, text_models = paths.text_encoder(dataset), params.text_models()
    digest = None
    with atomic_dir(out) as tmp:
        if text_models:
            data = load_prepared(paths.prepared(dataset))
            captions = training_captions(paths.prepared(dataset), data.train_labels, data.card.class_names,
                                         params.text_encoder.held_out)
            device = resolve_device(params.train.device)
            prompts = class_prompts(captions, data.train_labels, data.card.num_classes)
            encoder = train_text_encoder(params.text_encoder, data.train_images, captions, device, prompts=prompts)
            save_text_encoder(encoder, tmp)
            digest = encoder.digest
            log.info("text encoder of %s for %s: %d steps in %.1f s", dataset, ", ".join(text_models),
                     params.text_encoder.steps, encoder.seconds)
        for model in params.pipeline.models:
            marker = tmp / paths.text_marker(dataset, model).relative_to(out)
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_json(marker, {"text_encoder": digest if model in text_models else None})


def training_captions(prepared: Path, labels: np.ndarray, class_names: list[str], held_out: tuple[str, ...]
                      ) -> list[list[str]]:
    """The training split's captions with the ``held_out`` combinations (``text_encoder.held_out``) kept out."""
    captions = load_captions(prepared)
    if held_out and captions.source != "measured":
        raise ConfigError(f"text_encoder.held_out holds out words of the written captions, but {prepared} holds "
                          f"one's own captions ({captions.source}): empty text_encoder.held_out")
    return hold_out(captions.train, labels, parse_held_out(held_out, class_names))


def model_text_encoder(dataset: str, model: str, device: torch.device | str) -> TextEncoder:
    """The text encoder ``model`` is trained with, checked against its stage's record of it."""
    marker = paths.text_marker(dataset, model)
    if not marker.is_file():
        raise StageInputError(f"{marker} is missing: run the text encoder's stage first: dvc repro "
                              f"text_encoder@{dataset}")
    expected = read_json(marker)["text_encoder"]
    if expected is None:
        raise StageInputError(f"text_encoder@{dataset} ran when {model} was not text-conditioned; re-run it: dvc "
                              f"repro text_encoder@{dataset}")
    encoder = load_text_encoder(paths.text_encoder(dataset), device)
    if encoder.digest != expected:
        raise StageInputError(f"the text encoder of {dataset} is not the one {marker} names; re-run: dvc repro "
                              f"text_encoder@{dataset}")
    return encoder
