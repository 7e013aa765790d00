"""Stage text_encoder@<dataset>."""

from __future__ import annotations

import logging

import torch

from .. import paths
from ..captions import load_captions
from ..config.params import Params
from ..datasets import load_prepared
from ..device import resolve_device
from ..errors import StageInputError
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
            captions = load_captions(paths.prepared(dataset))
            device = resolve_device(params.train.device)
            prompts = class_prompts(captions.train, data.train_labels, data.card.num_classes)
            encoder = train_text_encoder(params.text_encoder, data.train_images, captions.train, device,
                                         prompts=prompts)
            save_text_encoder(encoder, tmp)
            digest = encoder.digest
            log.info("text encoder of %s for %s: %d steps in %.1f s", dataset, ", ".join(text_models),
                     params.text_encoder.steps, encoder.seconds)
        for model in params.pipeline.models:
            marker = tmp / paths.text_marker(dataset, model).relative_to(out)
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_json(marker, {"text_encoder": digest if model in text_models else None})


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
