"""FID and Inception Score through torch-fidelity, on the features of the dataset's classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from .classifier import load_classifier

CLASSIFIER_EXTRACTOR = "diffusionlab-classifier"


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """Torch-fidelity feature extractor over a trained :class:`~diffusionlab.classifier.Classifier`.

    Provides ``features`` (the penultimate layer, used for FID) and ``logits`` (torch-fidelity's
    Inception Score applies the softmax itself).
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


class ImageArrayDataset(Dataset):
    """uint8 [N, C, H, W] array as the dataset of uint8 tensors torch-fidelity expects."""

    def __init__(self, images: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def fid_and_is(
    generated: np.ndarray,
    reference: np.ndarray,
    classifier_path: str | Path,
    device: torch.device,
    isc_splits: int = 10,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """FID of ``generated`` against ``reference`` and the IS of ``generated``, both uint8 [N, C, H, W]."""
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"generated images {generated.shape[1:]} and reference {reference.shape[1:]} differ in shape")
    metrics = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(generated),
        input2=ImageArrayDataset(reference),
        cuda=device.type == "cuda",
        fid=True,
        isc=True,
        feature_extractor=CLASSIFIER_EXTRACTOR,
        feature_extractor_weights_path=str(classifier_path),
        isc_splits=isc_splits,
        batch_size=batch_size,
        rng_seed=seed,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "inception_score_mean": float(metrics["inception_score_mean"]),
        "inception_score_std": float(metrics["inception_score_std"]),
    }
