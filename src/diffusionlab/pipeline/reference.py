"""Stage reference@<dataset>."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import model_validator

from .. import paths
from ..config.sections import EvaluateConfig, SampleCounts, TrainConfig, apply_protocol
from ..datasets import DataConfig, load_prepared
from ..device import resolve_device
from ..evaluation.features import resolve_backends
from ..evaluation.metrics import Reference, extract, floor_scores, reference_file, save_reference
from ..io import atomic_dir, write_json
from ..validation import View

log = logging.getLogger(__name__)


class ReferenceParams(View):
    """What the reference stage reads of params.yaml: the evaluation, the sample counts it is compared at,
    the download time limit (the Inception weights) and ``train.device``."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleCounts = SampleCounts()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="before")
    @classmethod
    def _protocol(cls, raw: Any) -> Any:
        return apply_protocol(raw)


def reference_stage(params: ReferenceParams, dataset: str) -> None:
    """Cache the features of the real training images for every backend, and score real held-out images
    against them as a model's draws are scored: the floor a perfect model reaches at the same sample count,
    with its spread."""
    e, s = params.evaluate, params.sample
    device = resolve_device(params.train.device)
    backends = resolve_backends(e, paths.classifier(dataset), params.data.download_timeout)
    data = load_prepared(paths.prepared(dataset))
    train = data.train_images
    if 0 < e.reference_images < len(train):
        keep = np.sort(np.random.default_rng(e.seed).choice(len(train), e.reference_images, replace=False))
        train = train[keep]
    held_out = data.test_images[: s.num_samples * s.draws]
    if len(held_out) < s.num_samples:
        log.warning("the real-data floor uses all %d held-out images, fewer than the %d generated ones per draw "
                    "(sample.num_samples): FID is only comparable at equal counts", len(held_out), s.num_samples)
    floor: dict = {"num_held_out": int(min(len(held_out), s.num_samples)), "num_reference": int(len(train))}
    with atomic_dir(paths.reference(dataset) / "cache") as tmp:
        for backend in backends:
            reference = Reference.of(extract(train, backend, e, device).features, train.shape[1:])
            if e.prc:
                reference.knn_radii(e.prc_neighborhood)  # once here, not in every draw of every evaluation
            save_reference(reference_file(dataset, backend.name, root=tmp), reference)
            scores = floor_scores(extract(held_out, backend, e, device), s.num_samples, s.draws, reference, e)
            floor[backend.name] = scores
            log.info("%s floor (%s features, %d held-out vs %d train, spread from %s): FID %.4g ± %.2g", dataset,
                     backend.name, floor["num_held_out"], len(train), scores["spread"], scores.get("fid", np.nan),
                     scores.get("fid_std", np.nan))
    write_json(paths.reference(dataset) / "floor.json", floor)
