"""The feature backends that FID, IS, KID and precision/recall are computed on.

``inception``: torch-fidelity's InceptionV3 (``inception-v3-compat``), the network papers report
numbers with. Its weights are read from a path given in params and downloaded there when missing.

``classifier`` and ``resnet``: the dataset's own feature networks (:mod:`diffusionlab.nn.classifier`),
two designs that share no weights, registered with torch-fidelity as one feature extractor that
loads whichever network its weights file holds; they need nothing but the data, so they work offline.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ..chunks import file_digest
from ..config.sections import EvaluateConfig
from ..errors import StageInputError, WeightsUnavailable
from ..io import atomic_path, socket_timeout
from ..nn.classifier import load_classifier

CLASSIFIER_EXTRACTOR = "diffusionlab-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_URL = URL_INCEPTION_V3


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """Torch-fidelity feature extractor over a trained feature network of :mod:`diffusionlab.nn.classifier`.

    Provides ``features`` (the penultimate layer, [B, feature_dim]: FID, KID, precision/recall) and
    ``logits`` ([B, num_classes]: torch-fidelity's Inception Score applies the softmax itself).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError("the classifier feature extractor needs feature_extractor_weights_path")
        self.model, _ = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features, logits = self.model(images)
        named = {"features": features, "logits": logits}
        return tuple(named[name].float() for name in self.features_list)


if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierFeatureExtractor)


@dataclass(frozen=True)
class Backend:
    """A feature backend as torch-fidelity is told about it."""

    name: str
    """``classifier`` or ``inception``: the label recorded next to every number."""
    extractor: str
    """Name in torch-fidelity's feature-extractor registry."""
    weights_path: Path
    rgb: bool
    """The extractor takes 3-channel images only; grayscale is repeated to 3 channels."""
    identity: dict[str, float | str] = field(default_factory=dict)
    """What makes its numbers what they are: the classifier's held-out accuracy, the weights' SHA-256."""


NETWORK_BACKENDS = ("classifier", "resnet")
"""Backends over the feature networks trained on the dataset (:mod:`diffusionlab.nn.classifier`)."""


def network_backend(name: str, path: str | Path, accuracy: float | None = None) -> Backend:
    """Backend ``name`` (``classifier`` or ``resnet``) over the feature network saved at ``path``."""
    identity = {} if accuracy is None else {"classifier_accuracy": float(accuracy)}
    return Backend(name, CLASSIFIER_EXTRACTOR, Path(path), rgb=False, identity=identity)


def classifier_backend(path: str | Path, accuracy: float | None = None) -> Backend:
    return network_backend("classifier", path, accuracy)


def inception_backend(path: str | Path) -> Backend:
    digest = file_digest(path)
    identity = {"weights_sha256": digest}
    return Backend("inception", INCEPTION_EXTRACTOR, Path(path), rgb=True, identity=identity)


def ensure_inception_weights(path: str | Path, timeout: float, url: str | None = None) -> Path:
    """Return ``path`` holding torch-fidelity's InceptionV3 weights, downloading them there if missing.

    A download lands at ``path`` only when complete. Either way the file must load with
    ``weights_only=True`` (it can carry no code) and hold an InceptionV3 state dict before
    torch-fidelity is handed it; its SHA-256 is recorded next to every number it produces.
    """
    path, url = Path(path), url or INCEPTION_URL
    if not path.is_file():
        try:
            with socket_timeout(timeout), tempfile.TemporaryDirectory() as tmp:
                fetched = Path(tmp) / path.name
                torch.hub.download_url_to_file(url, str(fetched), progress=False)
                with atomic_path(path) as dest:
                    shutil.copyfile(fetched, dest)
        except (OSError, RuntimeError, urllib.error.URLError) as err:
            raise WeightsUnavailable(
                f"the inception feature backend needs torch-fidelity's InceptionV3 weights, which are not at {path} "
                f"and could not be downloaded from {url}: {str(err).strip()}\n"
                f"Fix: download {Path(url).name} on a machine with network access and put it at {path} "
                "(evaluate.inception_weights in params.yaml), or score with the dataset classifier, which works "
                "offline: evaluate.features: [classifier]"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means the same to the user
        raise WeightsUnavailable(
            f"{path} is not a usable InceptionV3 weights file ({type(err).__name__}: {err}); delete it so that "
            f"it is downloaded again from {url}, or put the original {Path(url).name} there"
        ) from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise WeightsUnavailable(f"{path} holds no InceptionV3 state dict (no 'fc.weight'); put the original "
                                 f"{Path(url).name} there")
    return path


class ImageArrayDataset(Dataset):
    """uint8 [N, C, H, W] array as the dataset of uint8 tensors torch-fidelity expects.

    With ``rgb`` a grayscale array is repeated to 3 channels, as InceptionV3 requires.
    """

    def __init__(self, images: np.ndarray, rgb: bool = False):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(images)
        self.repeat = 3 if rgb and images.shape[1] == 1 else 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        image = self.images[i]
        return image.repeat(self.repeat, 1, 1) if self.repeat > 1 else image


def resolve_backends(cfg: EvaluateConfig, networks: str | Path, timeout: float) -> list[Backend]:
    """The backends ``evaluate.features`` names, each checked before any work starts.

    ``networks`` is the folder of the dataset's feature networks (``classifier.pt``, ``resnet.pt``). Each
    must reach ``evaluate.min_classifier_accuracy`` on the held-out split (its features would make the
    metrics meaningless otherwise); the Inception weights must be on disk or downloadable.
    """
    backends = []
    for name in cfg.features:
        if name in NETWORK_BACKENDS:
            path = Path(networks) / f"{name}.pt"
            _, meta = load_classifier(path)
            if meta["accuracy"] < cfg.min_classifier_accuracy:
                raise StageInputError(
                    f"the {meta['dataset']} {name} feature network reaches {meta['accuracy']:.4f} held-out accuracy, "
                    f"below evaluate.min_classifier_accuracy = {cfg.min_classifier_accuracy}; its features would "
                    f"make FID and IS meaningless: train it longer ({name}.steps) or lower the threshold"
                )
            backends.append(network_backend(name, path, meta["accuracy"]))
        elif name == "inception":
            backends.append(inception_backend(ensure_inception_weights(cfg.inception_weights, timeout)))
        else:
            raise ValueError(f"unknown feature backend '{name}'; known: classifier, resnet, inception")
    return backends
