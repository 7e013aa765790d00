"""FID, Inception Score, KID and precision/recall, computed by ``torch_fidelity.calculate_metrics``.

The reference side (the real training images) goes through torch-fidelity's own file cache: the
``reference`` stage writes it once per dataset and backend, and every model's evaluation reads it
instead of extracting the same features again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset

from . import paths
from .config import EvaluateConfig
from .errors import StageInputError
from .features import Backend, ImageArrayDataset

FIDELITY_KEYS = {
    "frechet_inception_distance": "fid",
    "inception_score_mean": "isc_mean",
    "inception_score_std": "isc_std",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
"""torch-fidelity's result keys and the shorter names the metrics files and MLflow use."""


@dataclass(frozen=True)
class ReferenceCache:
    """torch-fidelity cache entry of the reference images: ``cache_root`` and ``input2_cache_name``."""

    root: Path
    name: str

    def exists(self) -> bool:
        return self.root.is_dir() and any(self.root.glob(f"{self.name}-*"))


def reference_cache(dataset: str, backend: str, root: Path | None = None) -> ReferenceCache:
    """The cache entry of ``dataset``'s training images for ``backend``, in the reference stage's
    output folder (or in ``root``, where that folder is being written)."""
    return ReferenceCache((root or paths.reference(dataset) / "cache") / backend, f"{dataset}-train")


class _CachedOnly(Dataset):
    """Stands for reference images whose features are in the cache; reading an image is an error."""

    def __init__(self, cache: ReferenceCache, size: int):
        self.cache, self.size = cache, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Tensor:
        raise StageInputError(f"reference features are missing from the cache {self.cache.root} "
                              f"({self.cache.name}); run: dvc repro reference")


def score(
    images: np.ndarray,
    reference: np.ndarray | None,
    num_reference: int,
    backend: Backend,
    cfg: EvaluateConfig,
    device: torch.device,
    cache: ReferenceCache | None = None,
) -> dict[str, float | int]:
    """The metrics ``cfg`` enables, of ``images`` (uint8 [N, C, H, W]) against the reference images.

    ``reference`` given: its features are extracted (and written to ``cache`` when one is given).
    ``reference`` None: its features are read from ``cache``, which must exist. IS is of ``images``
    alone. Returns the metrics plus the counts they were computed at (``num_generated``,
    ``num_reference``, ``kid_subset_size``), deterministic given ``cfg.seed``.
    """
    if reference is not None and images.shape[1:] != reference.shape[1:]:
        raise ValueError(f"images {images.shape[1:]} and reference {reference.shape[1:]} differ in shape")
    if reference is None:
        if cache is None or not cache.exists():
            where = "no cache" if cache is None else f"{cache.root} ({cache.name})"
            raise StageInputError(f"reference features not found in {where}; run: dvc repro reference")
        input2: Dataset = _CachedOnly(cache, num_reference)
    else:
        input2 = ImageArrayDataset(reference, backend.rgb)
        num_reference = len(reference)
    kid_subset_size = min(cfg.kid_subset_size, len(images), num_reference)
    if cfg.kid and kid_subset_size < 2:
        raise StageInputError(f"KID needs at least 2 images on each side, got {len(images)} and {num_reference}")
    raw = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(images, backend.rgb),
        input2=input2,
        cuda=device.type == "cuda",
        fid=cfg.fid,
        isc=cfg.isc,
        kid=cfg.kid,
        prc=cfg.prc,
        feature_extractor=backend.extractor,
        feature_extractor_weights_path=str(backend.weights_path),
        isc_splits=cfg.isc_splits,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=kid_subset_size,
        prc_neighborhood=cfg.prc_neighborhood,
        batch_size=cfg.batch_size,
        rng_seed=cfg.seed,
        cache=cache is not None,
        cache_root=str(cache.root) if cache is not None else None,
        input2_cache_name=cache.name if cache is not None else None,
        save_cpu_ram=True,
        verbose=False,
    )
    out: dict[str, float | int] = {FIDELITY_KEYS[k]: float(v) for k, v in raw.items() if k in FIDELITY_KEYS}
    out.update(num_generated=int(len(images)), num_reference=int(num_reference))
    if cfg.kid:
        out["kid_subset_size"] = int(kid_subset_size)
    return out
