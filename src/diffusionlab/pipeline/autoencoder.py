"""Stage autoencoder@<dataset>: the latent autoencoder the latent models (``latent: true``) train in.

It trains only when ``pipeline.models`` lists a latent model; otherwise it writes the per-model files alone.
Each model of ``pipeline.models`` gets ``models/<model>.json``, which its train stage depends on: for a model on
pixels it never changes, for a latent one it holds the autoencoder's digest, so a new autoencoder re-trains the
latent models and nothing else. ``autoencoder.pt`` persists between runs (``persist: true`` in dvc.yaml): the stage
re-runs when any model block changes, since it must know which are latent, and then re-uses the autoencoder if its
params, training images and the package's code are unchanged, so that its digest, and the latent models, stay as
they are.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import torch

from .. import paths
from ..chunks import file_digest
from ..config.params import Params
from ..datasets import load_prepared
from ..device import resolve_device
from ..errors import StageInputError
from ..evaluation.features import NETWORK_BACKENDS, network_backend
from ..evaluation.metrics import extract, floor_scores, load_reference, reference_file
from ..evaluation.restoration import psnr_ssim
from ..io import write_json
from ..runtime.autoencoding import reconstruct, train_autoencoder
from ..runtime.checkpoint import code_fingerprint
from ..runtime.latent import TrainedCodec, images_digest, reusable_codec, save_codec
from ..tensors import to_model_range
from ..viz.figures import panels_figure
from .train import write_loss_csv

log = logging.getLogger(__name__)
FIGURE_IMAGES = 8


def autoencoder_stage(params: Params, dataset: str) -> None:
    """Train the dataset's autoencoder if a listed model is latent; score its reconstructions of the held-out
    images (PSNR, SSIM and FID under each offline backend, as the real-data floor is scored) and write its latent
    scale."""
    out = paths.autoencoder(dataset)
    for old in out.glob("*"):
        if old.name != "autoencoder.pt":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    (out / "models").mkdir(parents=True)
    latent = params.latent_models()
    if not latent:
        for model in params.pipeline.models:
            write_json(paths.latent_link(dataset, model), {"latent": False})
        write_json(out / "metrics.json", {"trained": False})
        log.info("no model of pipeline.models is latent: no autoencoder trained for %s", dataset)
        return
    device = resolve_device(params.train.device)
    data = load_prepared(paths.prepared(dataset))
    names = [b for b in params.evaluate.features if b in NETWORK_BACKENDS]
    for name in names:
        if not reference_file(dataset, name).is_file():
            raise StageInputError(f"the reference features {reference_file(dataset, name)} are missing; run: "
                                  f"dvc repro reference@{dataset}")
    key = f"{images_digest(data.train_images)}:{code_fingerprint()}"
    trained = reusable_codec(out / "autoencoder.pt", device, params.autoencoder, key)
    reused = trained is not None
    if trained is None:
        trained = train_autoencoder(params.autoencoder, data.train_images, device)
        save_codec(out / "autoencoder.pt", trained, dataset, key)
    else:
        log.info("re-using %s: trained with the same autoencoder params, images and code", out / "autoencoder.pt")
    metrics = {**score(trained, data.test_images, names, params, dataset, device), "reused": reused}
    digest = file_digest(out / "autoencoder.pt")
    for model in params.pipeline.models:
        link = {"latent": True, "autoencoder": digest, "scale": trained.codec.scale} if model in latent else \
            {"latent": False}
        write_json(paths.latent_link(dataset, model), link)
    write_json(out / "metrics.json", metrics)
    write_loss_csv(trained.history, out / "loss.csv")
    shown = data.test_images[:FIGURE_IMAGES]
    panels_figure({"image": to_model_range(torch.from_numpy(shown)),
                   "reconstruction": to_model_range(torch.from_numpy(reconstruct(trained.codec, shown)))},
                  out / "reconstructions.png", f"{dataset} autoencoder, f = {params.autoencoder.factor}")


def score(trained: TrainedCodec, held_out: np.ndarray, backends: list[str], params: Params, dataset: str,
          device: torch.device) -> dict:
    """PSNR and SSIM of the reconstructions of the held-out images, and their FID against the training images under
    each backend, scored as the real-data floor is (reference@<dataset>'s floor.json): the best FID a latent model
    in this autoencoder can reach."""
    codec, s, e = trained.codec, params.sample, params.evaluate
    restored = reconstruct(codec, held_out)
    psnr, ssim = psnr_ssim(restored, held_out)
    metrics: dict = {"trained": True, "factor": codec.config.factor, "latent_channels": codec.config.latent_channels,
                     "latent_scale": codec.scale, "train_seconds": round(trained.seconds, 2),
                     "final_loss": trained.history[-1]["loss"], "psnr": psnr, "ssim": ssim,
                     "num_held_out": int(len(held_out))}
    for name in backends:
        backend = network_backend(name, paths.feature_network(dataset, name))
        scores = floor_scores(extract(restored, backend, e, device), s.num_samples, s.draws,
                              load_reference(reference_file(dataset, name)), e)
        metrics[name] = {"fid": scores["fid"], "fid_std": scores["fid_std"], "spread": scores["spread"]}
        log.info("%s autoencoder reconstructions: FID (%s) %.4g ± %.2g", dataset, name, scores["fid"],
                 scores["fid_std"])
    log.info("%s autoencoder: PSNR %.2f dB, SSIM %.4f on %d held-out images", dataset, psnr, ssim, len(held_out))
    return metrics
