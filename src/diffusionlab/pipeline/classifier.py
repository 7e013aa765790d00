"""Stage classifier@<dataset>."""

from __future__ import annotations

import logging

from .. import paths
from ..config.sections import TrainConfig
from ..datasets import load_prepared
from ..device import resolve_device
from ..io import write_json
from ..nn.classifier import RESNET, ClassifierConfig, accuracy, save_classifier, train_classifier
from ..validation import View

log = logging.getLogger(__name__)


class ClassifierParams(View):
    """What the classifier stage reads of params.yaml: the two feature networks' blocks and ``train.device``."""

    classifier: ClassifierConfig = ClassifierConfig()
    resnet: ClassifierConfig = RESNET
    train: TrainConfig = TrainConfig()

    def feature_network(self, name: str) -> ClassifierConfig:
        """The params block of feature network ``name`` (``classifier`` or ``resnet``)."""
        return {"classifier": self.classifier, "resnet": self.resnet}[name]


DESIGN = {"classifier": "conv", "resnet": "resnet"}
"""The network design of each feature network (params block)."""


def classifier_stage(params: ClassifierParams, dataset: str) -> None:
    """Train the feature networks FID and IS are computed on (``classifier`` and ``resnet``: two designs that
    share no weights), and report each one's held-out accuracy."""
    device = resolve_device(params.train.device)
    data = load_prepared(paths.prepared(dataset))
    out = paths.classifier(dataset)
    metrics: dict = {"test_size": int(len(data.test_labels))}
    for name, design in DESIGN.items():
        model, seconds = train_classifier(params.feature_network(name), data.train_images, data.train_labels,
                                          data.card.num_classes, device, design=design)
        acc = accuracy(model, data.test_images, data.test_labels, device)
        save_classifier(paths.feature_network(dataset, name), model.cpu(), acc, dataset)
        metrics[name] = {"test_accuracy": acc, "train_seconds": round(seconds, 2)}
        log.info("%s feature network on %s: test accuracy %.4f (%.1f s)", name, dataset, acc, seconds)
    write_json(out / "metrics.json", metrics)
