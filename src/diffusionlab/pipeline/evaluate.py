"""Stage evaluate@<dataset>-<model>."""

from __future__ import annotations

import logging

import mlflow
import numpy as np

from .. import paths
from ..checkpoint import load_checkpoint
from ..classifier import load_classifier
from ..config import Params
from ..datasets import load_prepared
from ..device import device_name, resolve_device
from ..errors import StageInputError
from ..evaluation import fid_and_is
from ..io import write_json
from ..nll import bits_per_dim
from ..tracking import continue_run

log = logging.getLogger(__name__)


def evaluate_stage(params: Params, dataset: str, model: str) -> None:
    """FID and Inception Score of the samples against the held-out split, and the bound on the held-out
    negative log-likelihood in bits/dim with its terms, written as DVC metrics."""
    run = params.run(dataset, model)
    e = run.evaluate
    device = resolve_device(run.train.device)
    classifier_path = paths.classifier(dataset) / "classifier.pt"
    _, meta = load_classifier(classifier_path)
    if meta["accuracy"] < e.min_classifier_accuracy:
        raise StageInputError(
            f"the {dataset} classifier reaches {meta['accuracy']:.3f} test accuracy, below "
            f"evaluate.min_classifier_accuracy = {e.min_classifier_accuracy}; its features would make FID and IS "
            "meaningless: train it longer (classifier.steps) or lower the threshold"
        )
    generated = np.load(paths.sample(dataset, model) / "samples.npy")
    reference = load_prepared(paths.prepared(dataset)).test_images
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    with continue_run(params.mlflow, run, paths.sample(dataset, model), device, device_name(device)):
        scores = fid_and_is(generated, reference, classifier_path, device, e.isc_splits, e.batch_size, e.seed)
        nll_images = reference if e.nll_images == 0 else reference[: e.nll_images]
        scores.update(bits_per_dim(ckpt.process, ckpt.ema, nll_images, e.nll_t_draws, e.batch_size, device, e.seed))
        metrics = {
            **scores,
            "features": e.features,
            "classifier_accuracy": meta["accuracy"],
            "num_generated": int(len(generated)),
            "num_reference": int(len(reference)),
            "nll_images": int(len(nll_images)),
            "nll_t_draws": e.nll_t_draws,
        }
        write_json(paths.evaluate(dataset, model) / "metrics.json", metrics)
        mlflow.log_metrics({**scores, "classifier_accuracy": meta["accuracy"]})
        mlflow.set_tags({"fid_features": e.features, "fid_num_generated": len(generated),
                         "fid_num_reference": len(reference)})
    log.info("%s-%s: FID %.3f, IS %.3f (%s features), NLL bound %.3f ± %.3f bits/dim", dataset, model,
             scores["fid"], scores["inception_score_mean"], e.features, scores["bpd"], scores["bpd_stderr"])
