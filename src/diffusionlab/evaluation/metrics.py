"""FID, Inception Score, KID and precision/recall over independent draws, with their spread.

Features are extracted once per image set with torch-fidelity's feature extractors, and every
metric is computed from them with torch-fidelity's own feature-level functions: so each draw, each
subset of the FID_inf fit and each bootstrap resample costs no further network pass. The reference
side (the real training images) is extracted once per dataset and backend by the ``reference``
stage and read from its cache by every model's evaluation, with the radii of its k-nearest-neighbour
balls: precision and recall are torch-fidelity's, computed here only so that those radii (N^2 distances
among N reference images) are computed once per dataset rather than once per draw.

Scores of a model are the mean over ``sample.draws`` independent draws of ``sample.num_samples``
images each, with the standard deviation over the draws (:mod:`diffusionlab.evaluation.significance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from .. import paths
from ..chunks import map_chunks
from ..config.sections import EvaluateConfig
from ..distributed import World
from ..errors import StageInputError
from ..io import atomic_path
from .features import Backend, ImageArrayDataset
from .significance import Spread, summarize

BOOTSTRAP_RESAMPLES = 20
"""Resamples that estimate the spread of the real-data floor when the held-out split has too few images for
two disjoint draws."""

DISTANCE_BLOCK_ROWS = 1024
"""Rows of one block of pairwise feature distances in precision/recall: 200 MB against 50,000 reference images."""


class StreamingStatistics:
    """FID's statistics (mean, covariance with ddof 1) of feature rows seen a chunk at a time, in float64, without
    holding the rows: each chunk's mean and centred sum of outer products merged into the running ones (Chan,
    Golub & LeVeque 1979), so the result does not drift with the number of chunks as raw sums of squares would."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        centred = x - mean
        m2 = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.m2 = len(x), mean, m2
            return
        total, delta = self.count + len(x), mean - self.mean
        self.mean = self.mean + delta * (len(x) / total)
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.count * len(x) / total)
        self.count = total

    def statistics(self) -> dict[str, np.ndarray]:
        """``mu`` and ``sigma`` as torch-fidelity's ``fid_features_to_statistics`` computes them."""
        if self.count < 2:
            raise StageInputError(f"FID needs at least 2 images, got {self.count}")
        return {"mu": self.mean, "sigma": self.m2 / (self.count - 1)}


@dataclass(frozen=True)
class Features:
    """One image set under one backend: ``features`` (FID, KID, precision/recall) and ``logits`` (IS); or, streamed
    in bounded memory, only FID's ``statistics`` of the features (``features`` None)."""

    features: Tensor | None
    logits: Tensor
    statistics: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index: np.ndarray) -> Features:
        if self.features is None:
            if len(index) == len(self) and np.array_equal(index, np.arange(len(self))):
                return self
            raise StageInputError("features streamed as statistics hold one draw; score them whole")
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return Features(self.features[idx], self.logits[idx])

    def fid_statistics(self) -> dict[str, np.ndarray]:
        return self.statistics if self.features is None else fid_features_to_statistics(self.features)


@dataclass(frozen=True)
class Reference:
    """The real training images' features under one backend, their FID statistics and the images' shape, and the
    radii of their k-nearest-neighbour balls by k (computed when first asked for, or read from the cache)."""

    features: Tensor
    stats: dict
    image_shape: tuple[int, ...] | None = None
    radii: dict[int, Tensor] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, features: Tensor, image_shape: tuple[int, ...] | None = None,
           radii: dict[int, Tensor] | None = None) -> Reference:
        return cls(features, fid_features_to_statistics(features), None if image_shape is None else tuple(image_shape),
                   dict(radii or {}))

    def knn_radii(self, k: int) -> Tensor:
        """Each reference row's distance to its k-th nearest other row."""
        if k not in self.radii:
            self.radii[k] = knn_radii(self.features, k)
        return self.radii[k]

    def check(self, images: np.ndarray) -> None:
        """Generated images must have the reference images' [C, H, W]."""
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise StageInputError(f"generated images {tuple(images.shape[1:])} and the reference images "
                                  f"{self.image_shape} differ in shape; re-run the reference and sample stages "
                                  "(dvc repro)")


def knn_radii(features: Tensor, k: int) -> Tensor:
    """The distance of each row of ``features`` to its k-th nearest other row (each row is its own nearest, at 0),
    a block of rows at a time."""
    if len(features) <= k:
        raise StageInputError(f"precision and recall with evaluate.prc_neighborhood = {k} need more than {k} "
                              f"images on each side, got {len(features)}")
    return torch.cat([torch.cdist(block, features).kthvalue(k + 1, dim=1).values
                      for block in features.split(DISTANCE_BLOCK_ROWS)])


def in_some_ball(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """Whether each row of ``points`` lies within ``radii`` of at least one row of ``centres``."""
    return torch.cat([(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(DISTANCE_BLOCK_ROWS)])


def precision_recall(generated: Tensor, reference: Reference, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 as torch-fidelity's ``prc_features_to_metric`` computes them: precision, the share
    of generated rows inside the union of the reference rows' k-NN balls; recall, the share of reference rows
    inside the union of the generated rows' balls."""
    precision = in_some_ball(generated, reference.features, reference.knn_radii(k)).float().mean()
    recall = in_some_ball(reference.features, generated, knn_radii(generated, k)).float().mean()
    return float(precision), float(recall)


def extract(images: np.ndarray, backend: Backend, cfg: EvaluateConfig, device: torch.device, world: World = World(),
            on_chunk: Callable[[int], None] | None = None, streamed: bool = False) -> Features | None:
    """Features of uint8 images [N, C, H, W] at the layers torch-fidelity uses for FID and for IS, in batches of
    ``evaluate.batch_size`` shared among the processes of ``world``: on rank 0 all of them in order (None
    elsewhere). Every batch holds the same images for any number of processes, so the features do not depend
    on it. ``on_chunk`` (rank 0) hears of each batch's size. ``streamed``: the features are kept only as FID's
    statistics (:class:`StreamingStatistics`), in memory bounded by one batch and the logits."""
    cls = FEATURE_EXTRACTORS_REGISTRY[backend.extractor]
    fid_layer, isc_layer = cls.get_default_feature_layer_for_metric("fid"), cls.get_default_feature_layer_for_metric("isc")
    cuda = device.type == "cuda"
    extractor = create_feature_extractor(backend.extractor, sorted({fid_layer, isc_layer}), cuda=cuda, verbose=False,
                                         feature_extractor_weights_path=str(backend.weights_path))
    width = {}

    def compute(rows: slice) -> np.ndarray:
        out = get_featuresdict_from_dataset(ImageArrayDataset(np.ascontiguousarray(images[rows]), backend.rgb),
                                            extractor, cfg.batch_size, cuda, save_cpu_ram=True, verbose=False)
        width["features"] = out[fid_layer].shape[1]
        return np.concatenate([out[fid_layer].numpy(), out[isc_layer].numpy()], axis=1)

    stream = StreamingStatistics() if streamed else None

    def keep(joined: np.ndarray) -> np.ndarray:
        """What rank 0 keeps of a chunk: everything, or only the logits once the features are in the statistics."""
        if stream is None:
            return joined
        stream.add(joined[:, :width["features"]])
        return joined[:, width["features"]:]

    kept = map_chunks(len(images), cfg.batch_size, compute, world, on_chunk=on_chunk, keep=keep)
    if kept is None:
        return None
    if stream is not None:
        return Features(None, torch.from_numpy(kept), stream.statistics())
    both = torch.from_numpy(kept)
    return Features(both[:, :width["features"]], both[:, width["features"]:])


def reference_file(dataset: str, backend: str, root: Path | None = None) -> Path:
    """The cached features of ``dataset``'s training images under ``backend``, in the reference stage's output
    folder (or in ``root``, where that folder is being written)."""
    return (root or paths.reference(dataset) / "cache") / f"{backend}.pt"


def save_reference(path: Path, reference: Reference) -> None:
    """The reference's features, image shape and whatever k-NN radii it has computed."""
    with atomic_path(path) as tmp:
        torch.save({"features": reference.features, "image_shape": list(reference.image_shape),
                    "radii": reference.radii}, tmp)


def load_reference(path: Path) -> Reference:
    if not path.is_file():
        raise StageInputError(f"reference features {path} not found; run: dvc repro reference")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return Reference.of(saved["features"], saved["image_shape"], saved.get("radii"))


def fid(features: Tensor | dict[str, np.ndarray], reference: Reference) -> float:
    """FID of ``features`` (rows, or their statistics) against the reference."""
    stats = features if isinstance(features, dict) else fid_features_to_statistics(features)
    stats = {k: v.astype(reference.stats[k].dtype, copy=False) for k, v in stats.items()}  # streamed ones are float64
    return float(fid_statistics_to_metric(stats, reference.stats, False)[KEY_METRIC_FID])


def inception_score(logits: Tensor, splits: int, seed: int) -> float:
    return float(isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)[KEY_METRIC_ISC_MEAN])


@dataclass(frozen=True)
class Extrapolation:
    """A score fitted as ``value + slope / N`` over subset sizes N: ``value`` is its limit at infinitely many images."""

    value: float
    stderr: float
    slope: float


def fit_inverse_n(sizes: np.ndarray, values: np.ndarray) -> Extrapolation:
    """Least-squares line of ``values`` against 1/``sizes``; the intercept with its standard error."""
    fit = stats.linregress(1.0 / np.asarray(sizes, dtype=float), np.asarray(values, dtype=float))
    return Extrapolation(float(fit.intercept), float(fit.intercept_stderr), float(fit.slope))


def inf_sizes(n: int, count: int) -> np.ndarray:
    """``count`` subset sizes from n/2 to n, evenly spaced in 1/N as Chong & Forsyth 2020 fit them. Half a draw
    at the least: at a few hundred images in 64-2048 feature dimensions FID bends away from the line below
    that, and the fit would overshoot."""
    inverse = np.linspace(1.0 / n, 2.0 / n, count)
    return np.unique(np.maximum(2, np.round(1.0 / inverse).astype(int)))


def extrapolate(score_fn, n: int, count: int, seed: int) -> Extrapolation:
    """Chong & Forsyth 2020: a score computed on random subsets of ``n`` items at sizes from n/2 to n, fitted
    linearly in 1/N and extrapolated to N = infinity. ``score_fn(index)`` scores the subset ``index``."""
    rng = np.random.default_rng(seed)
    sizes = inf_sizes(n, count)
    values = [score_fn(np.sort(rng.choice(n, size, replace=False))) for size in sizes]
    return fit_inverse_n(sizes, np.array(values))


def draw_scores(gen: Features, reference: Reference, cfg: EvaluateConfig, with_inf: bool = True) -> dict[str, float]:
    """The scores ``cfg`` enables of one draw: FID and IS (and their N = infinity extrapolations), KID,
    precision and recall, deterministic given ``cfg.seed``."""
    out: dict[str, float] = {}
    n = len(gen)
    with_inf = with_inf and gen.features is not None and cfg.protocol != "paper"
    if cfg.fid:
        out["fid"] = fid(gen.fid_statistics(), reference)
        if with_inf:
            out["fid_inf"] = extrapolate(lambda i: fid(gen.features[torch.from_numpy(i)], reference), n,
                                         cfg.inf_sizes, cfg.seed).value
    if cfg.isc:
        out["isc"] = inception_score(gen.logits, cfg.isc_splits, cfg.seed)
        if with_inf:
            out["isc_inf"] = extrapolate(lambda i: inception_score(gen.logits[torch.from_numpy(i)], 1, cfg.seed), n,
                                         cfg.inf_sizes, cfg.seed).value
    if cfg.kid:
        size = min(cfg.kid_subset_size, n, len(reference.features))
        if size < 2:
            raise StageInputError(f"KID needs at least 2 images on each side, got {n} and {len(reference.features)}")
        out["kid"] = float(kid_features_to_metric(gen.features, reference.features, kid_subsets=cfg.kid_subsets,
                                                  kid_subset_size=size, rng_seed=cfg.seed,
                                                  verbose=False)[KEY_METRIC_KID_MEAN])
    if cfg.prc:
        out["precision"], out["recall"] = precision_recall(gen.features, reference, cfg.prc_neighborhood)
    return out


def split_draws(n_total: int, draws: int) -> list[np.ndarray]:
    """The index ranges of ``draws`` consecutive, equal draws of ``n_total`` images."""
    if n_total % draws:
        raise StageInputError(f"{n_total} images do not split into {draws} equal draws; re-run the sample stage")
    size = n_total // draws
    return [np.arange(d * size, (d + 1) * size) for d in range(draws)]


def score_draws(gen: Features, draws: int, reference: Reference, cfg: EvaluateConfig,
                with_inf: bool = True) -> list[dict[str, float]]:
    """The scores of each of ``draws`` consecutive equal draws of ``gen``."""
    return [draw_scores(gen.subset(index), reference, cfg, with_inf) for index in split_draws(len(gen), draws)]


def floor_scores(held_out: Features, n: int, draws: int, reference: Reference, cfg: EvaluateConfig) -> dict:
    """The real-data floor: held-out real images scored as a model's draws are, with an honest spread.

    With at least two disjoint draws of ``n`` held-out images (up to ``draws``), the spread is over those
    (``spread: draws``). With fewer held-out images the floor is the score of the first ``n`` of them, and its
    spread is the standard deviation over ``BOOTSTRAP_RESAMPLES`` resamples of them with replacement
    (``spread: bootstrap``): the spread of a draw of that size, while the resamples' mean (biased by the
    repeated images) is not used."""
    available = len(held_out) // n
    if available >= 2:
        k = min(available, draws)
        out = summarize(score_draws(held_out.subset(np.arange(k * n)), k, reference, cfg))
        return {**out, "spread": "draws"}
    n = min(n, len(held_out))
    base = held_out.subset(np.arange(n))
    rng = np.random.default_rng(cfg.seed)
    resampled = [draw_scores(base.subset(rng.integers(0, n, n)), reference, cfg) for _ in range(BOOTSTRAP_RESAMPLES)]
    point = draw_scores(base, reference, cfg)
    out = {key: value for key, value in point.items()}
    for key in point:
        out[f"{key}_std"] = Spread.of([r[key] for r in resampled]).std
    return {**out, "draws": 1, "spread": "bootstrap", "resamples": BOOTSTRAP_RESAMPLES}


def score_images(images: np.ndarray, reference: Reference, backend: Backend, cfg: EvaluateConfig,
                 device: torch.device, with_inf: bool = False) -> dict[str, float]:
    """The scores of one set of uint8 images [N, C, H, W] (one draw) against ``reference``."""
    return draw_scores(extract(images, backend, cfg, device), reference, cfg, with_inf)
