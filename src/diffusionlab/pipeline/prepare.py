"""Stage prepare@<dataset>."""

from __future__ import annotations

import logging

from .. import paths
from ..config import Params
from ..datasets import prepare, save_prepared
from ..errors import ConfigError

log = logging.getLogger(__name__)


def prepare_stage(params: Params, dataset: str) -> None:
    """Download (or load) a dataset and write its prepared form."""
    if dataset not in params.datasets:
        raise ConfigError(f"unknown dataset '{dataset}': params.yaml defines {sorted(params.datasets)}")
    d = params.data
    image_size = params.datasets[dataset].image_size
    prepared = prepare(dataset, image_size, paths.RAW, d.mirror, d.download_timeout, d.digits_test_size, d.split_seed)
    save_prepared(prepared, paths.prepared(dataset))
    card = prepared.card
    log.info("prepared %s: %d train / %d test images of %dx%dx%d", dataset, card.train_size, card.test_size,
             card.channels, card.image_size, card.image_size)
