"""Stage prepare@<dataset>."""

from __future__ import annotations

import logging

from pydantic import Field

from .. import paths
from ..datasets import DataConfig, DatasetName, ImageSize, prepare, save_prepared
from ..errors import ConfigError
from ..validation import View

log = logging.getLogger(__name__)


class DatasetSize(View):
    image_size: ImageSize


class PrepareParams(View):
    """What prepare reads of params.yaml: the ``data`` section and each dataset's image size."""

    data: DataConfig = DataConfig()
    datasets: dict[DatasetName, DatasetSize] = Field(default_factory=dict)


def prepare_stage(params: PrepareParams, dataset: str) -> None:
    """Download (or load) a dataset and write its prepared form."""
    if dataset not in params.datasets:
        raise ConfigError(f"unknown dataset '{dataset}': params.yaml defines {sorted(params.datasets)}")
    prepared = prepare(dataset, params.datasets[dataset].image_size, paths.RAW, params.data)
    save_prepared(prepared, paths.prepared(dataset))
    card = prepared.card
    log.info("prepared %s: %d train / %d test images of %dx%dx%d; source: %s", dataset, card.train_size,
             card.test_size, card.channels, card.image_size, card.image_size, card.source)
