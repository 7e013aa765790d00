"""Stage reference@<dataset>."""

from __future__ import annotations

import logging

import numpy as np

from .. import paths
from ..config import Params
from ..datasets import load_prepared
from ..device import resolve_device
from ..evaluation import reference_cache, score
from ..features import resolve_backends
from ..io import atomic_dir, write_json

log = logging.getLogger(__name__)

def reference_stage(params: Params, dataset: str) -> None:
    """Cache the features of the real training images for every backend, and score the real held-out
    split against them: the floor a perfect model reaches at the same sample count."""
    e = params.evaluate
    device = resolve_device(params.train.device)
    backends = resolve_backends(e, paths.classifier(dataset) / "classifier.pt", params.data.download_timeout)
    data = load_prepared(paths.prepared(dataset))
    train = data.train_images
    if 0 < e.reference_images < len(train):
        keep = np.sort(np.random.default_rng(e.seed).choice(len(train), e.reference_images, replace=False))
        train = train[keep]
    held_out = data.test_images[: params.sample.num_samples]
    if len(held_out) < params.sample.num_samples:
        log.warning("the real-data floor uses all %d held-out images, fewer than the %d generated ones "
                    "(sample.num_samples): FID is only comparable at equal counts", len(held_out),
                    params.sample.num_samples)
    floor: dict = {"num_held_out": int(len(held_out)), "num_reference": int(len(train))}
    with atomic_dir(paths.reference(dataset) / "cache") as tmp:
        for backend in backends:
            cache = reference_cache(dataset, backend.name, root=tmp)
            floor[backend.name] = score(held_out, train, 0, backend, e, device, cache)
            log.info("%s floor (%s features, %d held-out vs %d train): %s", dataset, backend.name, len(held_out),
                     len(train), {k: round(v, 4) for k, v in floor[backend.name].items()})
    write_json(paths.reference(dataset) / "floor.json", floor)
