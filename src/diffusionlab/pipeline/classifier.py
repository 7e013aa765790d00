"""Stage classifier@<dataset>."""

from __future__ import annotations

import logging

from .. import paths
from ..classifier import accuracy, save_classifier, train_classifier
from ..config import Params
from ..datasets import load_prepared
from ..device import resolve_device
from ..io import write_json

log = logging.getLogger(__name__)


def classifier_stage(params: Params, dataset: str) -> None:
    """Train the classifier whose features FID and IS are computed on, and report its test accuracy."""
    device = resolve_device(params.train.device)
    data = load_prepared(paths.prepared(dataset))
    model, seconds = train_classifier(params.classifier, data.train_images, data.train_labels,
                                      data.card.num_classes, device)
    acc = accuracy(model, data.test_images, data.test_labels, device)
    out = paths.classifier(dataset)
    save_classifier(out / "classifier.pt", model.cpu(), acc, dataset)
    write_json(out / "metrics.json", {"test_accuracy": acc, "test_size": int(len(data.test_labels)),
                                      "train_seconds": round(seconds, 2)})
    log.info("classifier on %s: test accuracy %.4f", dataset, acc)
