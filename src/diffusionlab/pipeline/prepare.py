"""Stage prepare@<dataset>."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from .. import paths
from ..captions import write_captions
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
    own = params.data.captions
    if own is not None and not Path(own).is_file():
        raise ConfigError(f"data.captions names {own}, which is not a file; give a file with one caption per line "
                          "(training images, then test images) or set data.captions: null")
    prepared = prepare(dataset, params.datasets[dataset].image_size, paths.RAW, params.data)
    captions = write_captions(prepared.train_images, prepared.train_labels, prepared.test_images,
                              prepared.test_labels, prepared.card.class_names, own)
    save_prepared(prepared, paths.prepared(dataset), captions)
    card = prepared.card
    log.info("prepared %s: %d train / %d test images of %dx%dx%d; source: %s", dataset, card.train_size,
             card.test_size, card.channels, card.image_size, card.image_size, card.source)
