"""Stage evaluate@<dataset>-<model>."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..checkpoint import load_checkpoint
from ..classifier import accuracy, load_classifier
from ..config import EvaluateConfig, Params
from ..datasets import load_prepared
from ..device import device_name, resolve_device
from ..evaluation import reference_cache, score
from ..features import Backend, resolve_backends
from ..io import atomic_path, read_json, write_json
from ..nll import bits_per_dim
from ..tracking import Tracker, open_run, read_run_file, register_model, registered_model_name
from .sample import guidance_file

log = logging.getLogger(__name__)

SWEEP_COLUMNS = ["steps", "backend", "fid", "isc_mean", "kid_mean", "precision", "recall"]
GUIDANCE_COLUMNS = ["guidance", "class_accuracy", "backend", "fid", "isc_mean"]


def evaluate_stage(params: Params, dataset: str, model: str) -> None:
    """Score the samples with every feature backend against the cached reference statistics, next
    to the real-data floor; score the samples of each sweep step count; and bound the held-out
    negative log-likelihood in bits/dim. Written as DVC metrics and plots and logged to MLflow."""
    run = params.run(dataset, model)
    e = run.evaluate
    device = resolve_device(run.train.device)
    backends = resolve_backends(e, paths.classifier(dataset) / "classifier.pt", params.data.download_timeout)
    floor = read_json(paths.reference(dataset) / "floor.json")
    missing = [b.name for b in backends if b.name not in floor]
    if missing:
        raise FileNotFoundError(f"the reference statistics of {dataset} lack the backends {missing}; "
                                f"run: dvc repro reference@{dataset}")
    sample_dir = paths.sample(dataset, model)
    card = read_json(sample_dir / "sample.json")
    generated = {card["steps"]: np.load(sample_dir / "samples.npy")}
    for n in card["sweep_steps"]:
        generated[n] = np.load(sample_dir / "sweep" / f"steps_{n}.npy")
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    nll_images = load_prepared(paths.prepared(dataset)).test_images
    nll_images = nll_images if e.nll_images == 0 else nll_images[: e.nll_images]

    out = paths.evaluate(dataset, model)
    with open_run(params.mlflow, run, device, device_name(device), previous=sample_dir) as tracker:
        metrics: dict = {"family": run.model.family, "sampler": card["sampler"], "steps": card["steps"],
                         "num_generated": card["num_samples"], "num_reference": floor["num_reference"],
                         "num_held_out": floor["num_held_out"]}
        rows, main_scores = [], {}
        for backend in backends:
            cache = reference_cache(dataset, backend.name)
            by_steps = {n: score(images, None, floor["num_reference"], backend, e, device, cache)
                        for n, images in sorted(generated.items())}
            rows += [{"steps": n, "backend": backend.name, **result} for n, result in by_steps.items()]
            main = main_scores[backend.name] = by_steps[card["steps"]]
            real = {f"{k}_floor": v for k, v in floor[backend.name].items() if isinstance(v, float)}
            metrics[backend.name] = {**main, **real, **backend.identity}
            tracker.log_metrics({f"{backend.name}.{k}": v for k, v in {**main, **real}.items()})
        if card["class_conditional"]:
            metrics.update(score_guidance(dataset, card, sample_dir, backends, main_scores, floor, e, device, out,
                                          tracker))
        else:
            with atomic_path(out / "guidance.csv") as tmp:
                pd.DataFrame(columns=GUIDANCE_COLUMNS).to_csv(tmp, index=False)
        metrics.update(bits_per_dim(ckpt.process, ckpt.ema, nll_images, e.nll_t_draws, e.batch_size, device, e.seed))
        metrics.update(nll_images=int(len(nll_images)), nll_t_draws=e.nll_t_draws)
        tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("bpd")})
        sweep = pd.DataFrame(rows)
        if e.fid:
            for row in rows:
                tracker.log_metric(f"{row['backend']}.fid_vs_steps", row["fid"], step=int(row["steps"]))
        with atomic_path(out / "sweep.csv") as tmp:
            sweep.to_csv(tmp, index=False)
        primary = sweep[sweep.backend == backends[0].name]
        with atomic_path(out / "fid_vs_steps.csv") as tmp:
            primary[[c for c in SWEEP_COLUMNS if c in primary]].to_csv(tmp, index=False)
        write_json(out / "metrics.json", metrics)
        tracker.set_tags({"fid_features": ",".join(e.features), "fid_num_generated": card["num_samples"],
                         "fid_num_reference": floor["num_reference"]})
        if params.mlflow.register_best and tracker.enabled and e.fid:
            model_uri = read_run_file(paths.train(dataset, model)).get("model_uri")
            fid = metrics[backends[0].name]["fid"]
            registered = register_model(params.mlflow, run, model_uri, fid, backends[0].name, tracker.run_id)
            if registered:
                tracker.set_tags({"registered_model": registered_model_name(params.mlflow, dataset),
                                  "registered_version": registered[0]})
    for backend in backends:
        m = metrics[backend.name]
        log.info("%s-%s (%s features, %d generated vs %d train): FID %.3f (real-data floor %.3f)", dataset, model,
                 backend.name, card["num_samples"], floor["num_reference"], m.get("fid", float("nan")),
                 m.get("fid_floor", float("nan")))
    log.info("%s-%s: NLL bound %.3f ± %.3f bits/dim", dataset, model, metrics["bpd"], metrics["bpd_stderr"])


def score_guidance(dataset: str, card: dict, sample_dir: Path, backends: list[Backend], main_scores: dict[str, dict],
                   floor: dict, e: EvaluateConfig, device: torch.device, out: Path, tracker: Tracker) -> dict:
    """For a class-conditional model: the dataset classifier's accuracy on the class asked for, and FID and IS,
    at the sampling guidance scale (whose scores per backend, ``main_scores``, are already known) and at each
    of the guidance sweep; written to guidance.csv and MLflow."""
    labels = np.load(sample_dir / "labels.npy")
    by_w = {card["guidance"]: np.load(sample_dir / "samples.npy")}
    for w in card["guidance_sweep"]:
        by_w[w] = np.load(sample_dir / "guidance" / guidance_file(w))
    classifier, _ = load_classifier(paths.classifier(dataset) / "classifier.pt", device)
    rows = []
    for w, images in sorted(by_w.items()):
        hit = accuracy(classifier, images, labels, device)
        tracker.log_metric("class_accuracy_vs_guidance", hit, step=round(100 * w))
        for backend in backends:
            result = main_scores[backend.name] if w == card["guidance"] else score(
                images, None, floor["num_reference"], backend, e, device, reference_cache(dataset, backend.name))
            rows.append({"guidance": w, "class_accuracy": hit, "backend": backend.name, **result})
    table = pd.DataFrame(rows)
    with atomic_path(out / "guidance.csv") as tmp:
        table[[c for c in GUIDANCE_COLUMNS if c in table]].to_csv(tmp, index=False)
    main = table[table.guidance == card["guidance"]].iloc[0]
    tracker.log_metric("class_accuracy", float(main["class_accuracy"]))
    log.info("class accuracy against guidance scale w: %s",
             ", ".join(f"w={w:g}: {a:.3f}" for w, a in table.groupby("guidance")["class_accuracy"].first().items()))
    return {"class_accuracy": float(main["class_accuracy"]), "guidance": card["guidance"]}
