"""Stage evaluate@<dataset>-<model>: :func:`score` computes every score, :func:`publish` writes, logs and
registers them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..chunks import Meter
from ..config.params import Params, RunConfig
from ..config.sections import PAPER_SAMPLES, EvaluateConfig
from ..captions import AttributePrompt, Captions, attribute_prompts, load_captions, parse_held_out
from ..datasets import PreparedDataset, load_prepared
from ..errors import StageInputError
from ..device import device_name
from ..distributed import World
from ..evaluation.features import Backend, resolve_backends
from ..evaluation.likelihoods import bits_per_dim, ode_bits_per_dim_of
from ..evaluation.metrics import (
    Features,
    extract,
    floor_scores,
    load_reference,
    reference_file,
    score_draws,
    split_draws,
)
from ..evaluation.prompts import attribute_adherence, clip_scores, prompts_of_draws, real_images_for
from ..evaluation.restoration import psnr_ssim
from ..evaluation.significance import SCORES, spread_of, summarize, welch
from ..io import atomic_path, read_json, write_json
from ..nn.classifier import accuracy, load_classifier
from ..runtime.autoencoding import reconstruct
from ..runtime.checkpoint import Checkpoint, load_checkpoint
from ..runtime.latent import LatentCodec
from ..runtime.tracking import Tracker, open_run, read_run_file, register_model, registered_model_name
from ..text import cycled
from .world import in_world

log = logging.getLogger(__name__)

SWEEP_COLUMNS = ["steps", "backend", "draws"] + [f"{k}{s}" for k in SCORES for s in ("", "_std")]
GUIDANCE_COLUMNS = ["guidance", "backend", "draws", "class_accuracy", "class_accuracy_std"] + [
    f"{k}{s}" for k in SCORES for s in ("", "_std")]
EMA_COLUMNS = ["ema_width", "backend", "draws"] + [f"{k}{s}" for k in SCORES for s in ("", "_std")] + [
    "fid_vs_default", "fid_vs_default_p"]
Setting = tuple[int, float | None, float | None]
"""An evaluated set of images: (steps, guidance scale or None, rebuilt EMA width or None for the default EMA)."""


@dataclass
class Evaluation:
    """Every score of one model: per draw (``draws``), summarised at its sampling setting (``metrics``), against
    the steps (``sweep``), the guidance scale (``guidance``) and the rebuilt EMA's width (``ema``)."""

    metrics: dict
    """What metrics.json holds: the summary per backend beside the floor, class accuracy and bits/dim."""
    draws: pd.DataFrame
    """One row per (steps, guidance, EMA width, backend, draw) with every score."""
    sweep: pd.DataFrame
    guidance: pd.DataFrame
    ema: pd.DataFrame
    """Per backend, the default EMA (``ema_width`` empty) and each rebuilt width, each against the default."""
    backends: list[Backend]
    card: dict
    """The sample stage's sample.json."""
    floor: dict
    """The reference stage's floor.json."""


def task(card: dict, guidance: float | None = None) -> str:
    """What a row's images were asked to be: ``conditional, w=1`` (guided at w), ``unconditional`` (an
    unconditional model), or ``unconditional (w=0)`` (a conditional model's unconditional branch)."""
    if not card["class_conditional"]:
        return "unconditional"
    w = card["guidance"] if guidance is None else guidance
    return "unconditional (w=0)" if w == 0 else f"conditional, w={w:g}"


@dataclass
class Inputs:
    """What the evaluation reads, loaded and checked before any work: the sample stage's card and the files of
    each (steps, guidance, EMA width) setting it drew, the floor, the checkpoint, held-out images, the classes asked for
    and (conditional models) the classifier that checks them."""

    card: dict
    settings: dict[Setting, Path]
    floor: dict
    ckpt: Checkpoint
    nll_images: np.ndarray
    labels: np.ndarray
    classifier: torch.nn.Module | None
    held_out: np.ndarray
    """Every held-out image: a latent model's autoencoder reconstructs them."""
    attributes: AttributeImages | None = None
    """A text model's samples of the attribute prompts."""


@dataclass
class AttributeImages:
    """A text model's samples of the prompts that ask for an attribute's word, and what adherence is measured
    against: the training split's captions and labels, and the (class, word) combinations held out of them."""

    images: np.ndarray
    asked: list[AttributePrompt]
    """The prompt of each image of one draw."""
    captions: Captions
    train_images: np.ndarray
    train_labels: np.ndarray
    class_names: list[str]
    held_out: set[tuple[int, str]]

    def per_draw(self, draws: int) -> list[dict[str, float]]:
        return [attribute_adherence(self.images[i], self.asked, self.captions, self.train_labels, self.held_out)
                for i in split_draws(len(self.images), draws)]

    def real_per_draw(self, draws: int) -> list[dict[str, float]]:
        """The adherence of ``draws`` draws of training images, each with the word its prompt asks
        (:func:`real_images_for`): what a model that follows the prompts as the data do reaches."""
        return [attribute_adherence(real_images_for(self.asked, self.captions, self.train_images,
                                                    self.train_labels, seed=d), self.asked, self.captions,
                                    self.train_labels) for d in range(draws)]


def attribute_images(card: dict, dataset: str, model: str, prepared: PreparedDataset, ckpt: Checkpoint
                     ) -> AttributeImages | None:
    """The sample stage's images of the attribute prompts (None when it drew none), each with what it asks."""
    if not card.get("attribute_prompts"):
        return None
    names = prepared.card.class_names
    captions = load_captions(paths.prepared(dataset))
    known = {a.prompt: a for a in attribute_prompts(names, captions.names)}
    unknown = [p for p in card["attribute_prompts"] if p not in known][:1]
    if unknown:
        raise StageInputError(f"sample.json asks for the attribute prompt '{unknown[0]}', which the captions of "
                              f"{dataset} do not word; re-run its sample stage: dvc repro sample@{dataset}-{model}")
    asked = [known[p] for p in cycled(card["attribute_prompts"], card["attribute_samples"])]
    return AttributeImages(np.load(paths.attribute_samples(dataset, model) / "samples.npy"), asked, captions,
                           prepared.train_images, prepared.train_labels, names,
                           parse_held_out(ckpt.text.config.held_out, names))


def evaluate_stage(params: Params, dataset: str, model: str) -> None:
    """Score a model's samples and bound its likelihood (:func:`score`); write them as DVC metrics and plots,
    log them to MLflow and register the model (:func:`publish`). The inputs are read and checked before the
    MLflow run opens (:func:`load_inputs`): a missing input fails no run.

    With ``evaluate.nproc_per_node`` > 1 (or under torchrun) the processes share the feature extraction
    (:func:`extract_all`) and rank 0 computes, writes and logs the scores."""
    run = params.run(dataset, model)
    in_world(params, run.evaluate.nproc_per_node, "evaluate.nproc_per_node",
             lambda world, device: _evaluate(params, run, world, device),
             check=lambda: resolve_backends(run.evaluate, paths.classifier(dataset), params.data.download_timeout))


def _evaluate(params: Params, run: RunConfig, world: World, device: torch.device) -> None:
    backends = resolve_backends(run.evaluate, paths.classifier(run.dataset), params.data.download_timeout)
    inputs = load_inputs(run, backends, device)
    if not world.is_main:
        extract_all(run, backends, inputs, device, world)
        return
    announce(run, backends, inputs, world)
    previous = paths.sample(run.dataset, run.model_name)
    with open_run(params.mlflow, run, device, device_name(device), previous=previous) as tracker:
        features = extract_all(run, backends, inputs, device, world)
        evaluation = score(run, backends, inputs, device, features)
        publish(evaluation, params, run, tracker)
    report(evaluation, run)


def announce(run: RunConfig, backends: list[Backend], inputs: Inputs, world: World) -> None:
    """Log the work ahead: feature-network passes over the samples, network evaluations of the bounds."""
    e = run.evaluate
    images = sum(len(np.load(path, mmap_mode="r")) for path in inputs.settings.values())
    nll = len(inputs.nll_images) * e.nll_t_draws
    ode = min(e.ode_images, len(inputs.nll_images)) * (2 * e.ode_steps - 1) * e.ode_probes if e.ode_images else 0
    log.info("%s: features of %d images under %d backend(s) on %d process(es); bits/dim: %s network evaluations "
             "for the bound, %s with a backward pass for the ODE", run.name, images, len(backends), world.size,
             f"{nll:,}", f"{ode:,}")


def extract_all(run: RunConfig, backends: list[Backend], inputs: Inputs, device: torch.device,
                world: World = World()) -> dict[tuple[Setting, str], Features] | None:
    """The features of every setting's images under every backend, keyed (setting, backend), shared among the
    processes of ``world``: on rank 0 (None elsewhere)."""
    arrays = {setting: np.load(path, mmap_mode="r") for setting, path in inputs.settings.items()}
    name = {setting: "-".join(map(str, setting)) for setting in arrays}
    work = {f"{name[st]}-{b.name}": (len(images), 0, 1) for st, images in arrays.items() for b in backends}
    meter = Meter(f"{run.name} features", work, world)
    out = {}
    for setting, images in arrays.items():
        for backend in backends:
            with meter.progress(f"{name[setting]}-{backend.name}") as on_chunk:
                out[(setting, backend.name)] = extract(images, backend, run.evaluate, device, world, on_chunk,
                                                       streamed=run.evaluate.protocol == "paper")
    return out if world.is_main else None


def load_inputs(run: RunConfig, backends: list[Backend], device: torch.device) -> Inputs:
    """The evaluation's inputs (:class:`Inputs`); a reference without one of ``backends`` is refused."""
    dataset, model, e = run.dataset, run.model_name, run.evaluate
    floor = read_json(paths.reference(dataset) / "floor.json")
    missing = [b.name for b in backends if b.name not in floor]
    if missing:
        raise FileNotFoundError(f"the reference statistics of {dataset} lack the backends {missing}; "
                                f"run: dvc repro reference@{dataset}")
    sample_dir = paths.sample(dataset, model)
    card = read_json(sample_dir / "sample.json")
    main_steps = card["steps"]
    main_w = card["guidance"] if card["class_conditional"] else None
    settings = {(main_steps, main_w, None): sample_dir / "samples.npy"}
    settings.update({(n, main_w, None): sample_dir / "sweep" / f"steps_{n}.npy" for n in card["sweep_steps"]})
    settings.update({(main_steps, w, None): paths.guidance_samples(dataset, model, w) for w in card["guidance_sweep"]})
    settings.update({(main_steps, main_w, width): paths.ema_samples(dataset, model, width)
                     for width in card.get("ema_widths", [])})
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    prepared = load_prepared(paths.prepared(dataset))
    held_out = prepared.test_images
    nll_images = held_out if e.nll_images == 0 else held_out[: e.nll_images]
    labels = np.load(sample_dir / "labels.npy")
    classifier = load_classifier(paths.feature_network(dataset, "classifier"), device)[0] if card["class_conditional"] else None
    return Inputs(card, settings, floor, ckpt, nll_images, labels, classifier, held_out,
                  attribute_images(card, dataset, model, prepared, ckpt))


def score(run: RunConfig, backends: list[Backend], inputs: Inputs, device: torch.device,
          features: dict[tuple[Setting, str], Features] | None = None) -> Evaluation:
    """Score each of the sample stage's draws with every feature backend against the cached reference features
    (``features``: those :func:`extract_all` returns, extracted here when None):
    at the sampling steps, at each sweep step count, (class-conditional models) at each guidance scale and from
    each rebuilt EMA width;
    summarise them as mean and standard deviation next to the real-data floor, with Welch's test against it;
    and bound the held-out negative log-likelihood in bits/dim (the family's bound and the ODE's)."""
    dataset, e = run.dataset, run.evaluate
    card, settings, floor, ckpt = inputs.card, inputs.settings, inputs.floor, inputs.ckpt
    nll_images, labels, classifier = inputs.nll_images, inputs.labels, inputs.classifier
    draws, main_steps = card["draws"], card["steps"]
    main_w = card["guidance"] if card["class_conditional"] else None

    metrics: dict = {"family": run.model.family, "budget": run.data.budget, "sampler": card["sampler"],
                     "steps": main_steps,
                     "task": task(card), "draws": draws, "num_generated": card["num_samples"],
                     "num_reference": floor["num_reference"], "num_held_out": floor["num_held_out"],
                     "protocol": e.protocol}
    if e.protocol == "paper":
        metrics["comparable_with_published"] = card["num_samples"] == PAPER_SAMPLES
        log.info("%s: the published numbers' protocol (one draw, InceptionV3, the whole training split) at %d "
                 "samples: %s", run.name, card["num_samples"], "comparable with published FID-50k and IS"
                 if metrics["comparable_with_published"] else f"not comparable with FID-50k ({PAPER_SAMPLES:,} "
                 "samples): set sample.num_samples: 50000")
    rows = []
    clip = ckpt.text if card.get("text_conditional") else None
    prompts = prompts_of_draws(card["prompts"], card["num_samples"], draws) if clip is not None else []
    references = {b.name: load_reference(reference_file(dataset, b.name)) for b in backends}
    features = features if features is not None else extract_all(run, backends, inputs, device)
    for (steps, w, width), path in settings.items():
        images = np.load(path)
        hits = ([accuracy(classifier, images[i], labels[i], device) for i in split_draws(len(images), draws)]
                if classifier is not None and steps == main_steps else None)
        adherence = ([float(clip_scores(clip, images[i], [prompts[k] for k in i]).mean())
                      for i in split_draws(len(images), draws)] if clip is not None and steps == main_steps else None)
        for backend in backends:
            reference = references[backend.name]
            reference.check(images)
            per_draw = score_draws(features[((steps, w, width), backend.name)], draws, reference, e,
                                   with_inf=steps == main_steps)
            for d, scores in enumerate(per_draw):
                rows.append({"steps": steps, "guidance": w, "ema_width": width, "backend": backend.name, "draw": d,
                             **scores,
                             **({"class_accuracy": hits[d]} if hits else {}),
                             **({"clip_score": adherence[d]} if adherence else {})})
    table = pd.DataFrame(rows)
    default_ema = table[table.ema_width.isna()]
    main = default_ema[(default_ema.steps == main_steps) & (_same_w(default_ema.guidance, main_w))]
    for backend in backends:
        summary = summarize(_records(main[main.backend == backend.name]))
        real = floor[backend.name]
        versus = {}
        if e.fid and spread_of(real, "fid") is not None and spread_of(summary, "fid") is not None:
            diff = welch(spread_of(summary, "fid"), spread_of(real, "fid"), e.significance)
            versus = {"fid_vs_floor": diff.change, "fid_vs_floor_p": diff.p}
        floor_values = {_floor_key(k): v for k, v in real.items() if isinstance(v, float)}
        metrics[backend.name] = {**summary, **floor_values, **versus, **backend.identity}
    for name in [n for n in ("class_accuracy", "clip_score") if n in main]:
        per_draw = main.groupby("draw")[name].first()
        metrics[name] = float(per_draw.mean())
        if len(per_draw) > 1:
            metrics[f"{name}_std"] = float(per_draw.std(ddof=1))
    if main_w is not None:
        metrics["guidance"] = main_w
    if inputs.attributes is not None:
        metrics["attributes"] = {**adherence_summary(inputs.attributes.per_draw(draws), inputs.attributes),
                                 "real": adherence_summary(inputs.attributes.real_per_draw(draws))}
    sweep = _summaries(default_ema[_same_w(default_ema.guidance, main_w)], ["steps", "backend"])
    guidance = (_summaries(default_ema[default_ema.steps == main_steps], ["guidance", "backend"])
                if main_w is not None else pd.DataFrame(columns=GUIDANCE_COLUMNS))
    ema = ema_widths(table[(table.steps == main_steps) & _same_w(table.guidance, main_w)], e.significance)
    if len(ema) and e.fid:
        metrics["ema"] = best_ema_width(ema, e.significance)
    if main_w is not None:
        metrics["unconditional"] = _unconditional(guidance)
    if ckpt.codec is not None:
        # its bound and ODE density are of the continuous latents, not of the 8-bit images: not comparable
        metrics["likelihood"] = "not computed: a latent model's likelihood is of its latents, not of the images"
        metrics["autoencoder"] = autoencoder_scores(ckpt.codec, inputs.held_out, backends, references, card, e,
                                                    device)
        return Evaluation(metrics, table, sweep, guidance, ema, backends, card, floor)
    metrics.update(bits_per_dim(ckpt.process, ckpt.ema, nll_images, e.nll_t_draws, e.batch_size, device, e.seed))
    metrics.update(nll_images=int(len(nll_images)), nll_t_draws=e.nll_t_draws)
    if e.ode_images:
        metrics.update(ode_bits_per_dim_of(ckpt.process, ckpt.ema, nll_images[: e.ode_images], e.ode_steps,
                                           e.ode_probes, e.batch_size, device, e.seed))
        metrics.update(ode_images=min(e.ode_images, len(nll_images)), ode_steps=e.ode_steps)
    return Evaluation(metrics, table, sweep, guidance, ema, backends, card, floor)


def adherence_summary(per_draw: list[dict[str, float]], attributes: AttributeImages | None = None) -> dict:
    """Each adherence score's mean and standard deviation over the draws, with ``attributes`` the prompts' count and
    the held-out combinations."""
    out: dict = {} if attributes is None else {
        "images_per_draw": len(attributes.asked), "prompts": len(dict.fromkeys(a.prompt for a in attributes.asked)),
        "held_out": sorted(f"{w} {attributes.class_names[c]}" for c, w in attributes.held_out)}
    for key in dict.fromkeys(k for d in per_draw for k in d):
        values = np.array([d[key] for d in per_draw if key in d and np.isfinite(d[key])])
        if len(values):
            out[key] = float(values.mean())
        if len(values) > 1:
            out[f"{key}_std"] = float(values.std(ddof=1))
    return out


def ema_widths(rows: pd.DataFrame, level: float) -> pd.DataFrame:
    """The main setting's scores from the default EMA (``ema_width`` empty) and from each rebuilt width, per
    backend, each rebuilt width's FID against the default EMA's with Welch's test (empty without rebuilt widths)."""
    if rows.ema_width.isna().all():
        return pd.DataFrame(columns=EMA_COLUMNS)
    table = _summaries(rows, ["ema_width", "backend"])
    for i, row in table.iterrows():
        default = table[table.ema_width.isna() & (table.backend == row["backend"])].iloc[0]
        a, b = spread_of(row.to_dict(), "fid"), spread_of(default.to_dict(), "fid")
        if pd.notna(row["ema_width"]) and a is not None and b is not None:
            diff = welch(a, b, level)
            table.loc[i, ["fid_vs_default", "fid_vs_default_p"]] = diff.change, diff.p
    return table


def best_ema_width(table: pd.DataFrame, level: float) -> dict:
    """Per backend, the rebuilt EMA width of the lowest mean FID, its FID against the default EMA's, and whether the
    difference is beyond the noise (Welch's test at ``evaluate.significance``: ``p`` below it)."""
    out = {}
    for backend, rows in table[table.ema_width.notna()].groupby("backend"):
        best = rows.loc[rows.fid.idxmin()]
        default = table[table.ema_width.isna() & (table.backend == backend)].iloc[0]
        out[backend] = {"best_width": float(best["ema_width"]), "fid": float(best["fid"]),
                        "fid_std": float(best["fid_std"]), "default_fid": float(default["fid"]),
                        "default_fid_std": float(default["fid_std"]),
                        "fid_vs_default": float(best["fid_vs_default"]),
                        "fid_vs_default_p": float(best["fid_vs_default_p"]),
                        "beyond_noise": bool(best["fid_vs_default_p"] < level)}
    return out


def autoencoder_scores(codec: LatentCodec, held_out: np.ndarray, backends: list[Backend], references: dict,
                       card: dict, e: EvaluateConfig, device: torch.device) -> dict:
    """A latent model's autoencoder: PSNR and SSIM of its reconstructions of the held-out images, and their FID
    under each backend scored as the real-data floor is (draws of the sample stage's image count): the best FID a
    model in this autoencoder's latents can reach."""
    restored = reconstruct(codec, held_out)
    psnr, ssim = psnr_ssim(restored, held_out)
    out: dict = {"factor": codec.config.factor, "latent_channels": codec.config.latent_channels,
                 "latent_scale": codec.scale, "psnr": psnr, "ssim": ssim, "num_held_out": int(len(held_out))}
    for backend in backends:
        scores = floor_scores(extract(restored, backend, e, device), card["num_samples"], card["draws"],
                              references[backend.name], e)
        out[backend.name] = {"fid": scores["fid"], "fid_std": scores["fid_std"], "spread": scores["spread"]}
        log.info("autoencoder reconstructions of %d held-out images: FID (%s) %.4g ± %.2g", len(held_out),
                 backend.name, scores["fid"], scores["fid_std"])
    log.info("autoencoder: PSNR %.2f dB, SSIM %.4f", psnr, ssim)
    return out


def publish(evaluation: Evaluation, params: Params, run: RunConfig, tracker: Tracker) -> None:
    """Write draws.csv, sweep.csv, guidance.csv, ema.csv, fid_vs_steps.csv and metrics.json; log the scores to the
    stage's MLflow run; register the model with its FID (``mlflow.register_best``)."""
    metrics, backends, card, floor = evaluation.metrics, evaluation.backends, evaluation.card, evaluation.floor
    e, out = run.evaluate, paths.evaluate(run.dataset, run.model_name)
    with atomic_path(out / "draws.csv") as tmp:
        evaluation.draws.to_csv(tmp, index=False)
    for backend in backends:
        scores = metrics[backend.name]
        tracker.log_metrics({f"{backend.name}.{k}": v for k, v in scores.items() if k not in backend.identity})
    if "class_accuracy" in metrics:
        tracker.log_metrics({k: metrics[k] for k in ("class_accuracy", "class_accuracy_std") if k in metrics})
    if "attributes" in metrics:
        for prefix, scores in (("attributes", metrics["attributes"]), ("attributes.real",
                                                                     metrics["attributes"]["real"])):
            tracker.log_metrics({f"{prefix}.{k}": v for k, v in scores.items() if isinstance(v, float)})
    for w, rows_w in evaluation.guidance.groupby("guidance"):
        if "class_accuracy" in rows_w:
            tracker.log_metric("class_accuracy_vs_guidance", float(rows_w.class_accuracy.iloc[0]), step=round(100 * w))
    tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("bpd")})
    if "autoencoder" in metrics:
        ae = metrics["autoencoder"]
        tracker.log_metrics({"autoencoder.psnr": ae["psnr"], "autoencoder.ssim": ae["ssim"],
                             **{f"autoencoder.{b.name}.fid": ae[b.name]["fid"] for b in backends}})
    sweep = evaluation.sweep
    if e.fid:
        for row in sweep.to_dict("records"):
            tracker.log_metric(f"{row['backend']}.fid_vs_steps", row["fid"], step=int(row["steps"]))
    with atomic_path(out / "sweep.csv") as tmp:
        sweep[[c for c in SWEEP_COLUMNS if c in sweep]].to_csv(tmp, index=False)
    with atomic_path(out / "guidance.csv") as tmp:
        evaluation.guidance[[c for c in GUIDANCE_COLUMNS if c in evaluation.guidance]].to_csv(tmp, index=False)
    with atomic_path(out / "ema.csv") as tmp:
        evaluation.ema[[c for c in EMA_COLUMNS if c in evaluation.ema]].to_csv(tmp, index=False)
    if e.fid:
        for row in evaluation.ema[evaluation.ema.ema_width.notna()].to_dict("records"):
            tracker.log_metric(f"{row['backend']}.fid_vs_ema_width", row["fid"], step=round(1000 * row["ema_width"]))
    primary = sweep[sweep.backend == backends[0].name]
    with atomic_path(out / "fid_vs_steps.csv") as tmp:
        primary[[c for c in ("steps", "fid", "fid_std") if c in primary]].to_csv(tmp, index=False)
    write_json(out / "metrics.json", metrics)
    tracker.set_tags({"fid_features": ",".join(e.features), "fid_num_generated": card["num_samples"],
                      "fid_draws": card["draws"], "fid_num_reference": floor["num_reference"]})
    if params.mlflow.register_best and tracker.enabled and e.fid:
        model_uri = read_run_file(paths.train(run.dataset, run.model_name)).get("model_uri")
        fid = metrics[backends[0].name]["fid"]
        registered = register_model(params.mlflow, run, model_uri, fid, backends[0].name, tracker.run_id)
        if registered:
            tracker.set_tags({"registered_model": registered_model_name(params.mlflow, run.dataset),
                              "registered_version": registered[0]})


def report(evaluation: Evaluation, run: RunConfig) -> None:
    """Log each backend's FID beside the floor, the best rebuilt EMA width, and the likelihoods."""
    metrics, card, floor = evaluation.metrics, evaluation.card, evaluation.floor
    for backend in evaluation.backends:
        m = metrics[backend.name]
        log.info("%s (%s features, %d draws of %d vs %d train): FID %.3f ± %.3f (real-data floor %.3f ± %.3f)",
                 run.name, backend.name, card["draws"], card["num_samples"], floor["num_reference"],
                 m.get("fid", np.nan), m.get("fid_std", np.nan), m.get("fid_floor", np.nan),
                 m.get("fid_floor_std", np.nan))
    for backend, best in metrics.get("ema", {}).items():
        log.info("%s (%s features): the best rebuilt EMA, width %g: FID %.3f ± %.3f against the default EMA's "
                 "%.3f ± %.3f (p = %.2g: %s)", run.name, backend, best["best_width"], best["fid"], best["fid_std"],
                 best["default_fid"], best["default_fid_std"], best["fid_vs_default_p"],
                 "beyond the noise" if best["beyond_noise"] else "within the noise")
    adherence = metrics.get("attributes", {})
    for name in [k[:-2] for k in adherence if k.endswith("_r")]:
        real = adherence["real"]
        log.info("%s: %s as the prompts ask: r %.3f ± %.3f, gain %.3f ± %.3f (training images with the word: r %.3f, "
                 "gain %.3f)", run.name, name, adherence[f"{name}_r"], adherence.get(f"{name}_r_std", np.nan),
                 adherence.get(f"{name}_gain", np.nan), adherence.get(f"{name}_gain_std", np.nan),
                 real.get(f"{name}_r", np.nan), real.get(f"{name}_gain", np.nan))
    for key, what in (("bpd", "NLL bound"), ("bpd_ode", "NLL through the ODE")):
        if key in metrics:
            log.info("%s: %s %.3f ± %.3f bits/dim", run.name, what, metrics[key], metrics[f"{key}_stderr"])


def _floor_key(key: str) -> str:
    """``fid`` -> ``fid_floor``, ``fid_std`` -> ``fid_floor_std``."""
    return f"{key[:-4]}_floor_std" if key.endswith("_std") else f"{key}_floor"


def _same_w(column: pd.Series, w: float | None) -> pd.Series:
    return column.isna() if w is None else column == w


def _records(rows: pd.DataFrame) -> list[dict]:
    keep = [c for c in rows.columns if c in SCORES or c in ("class_accuracy", "clip_score")]
    return [{k: float(v) for k, v in r.items() if pd.notna(v)} for r in rows[keep].to_dict("records")]


def _summaries(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over the draws of every score, per group of ``by``."""
    rows = [{**dict(zip(by, key)), **summarize(_records(group))}
            for key, group in table.groupby(by, sort=True, dropna=False)]
    return pd.DataFrame(rows)


def _unconditional(guidance: pd.DataFrame) -> dict:
    """A conditional model's unconditional branch (w = 0), per backend, when the guidance sweep scored it."""
    rows = guidance[guidance.guidance == 0]
    return {r["backend"]: {k: r[k] for k in r if k not in ("guidance", "backend") and pd.notna(r[k])}
            for r in rows.to_dict("records")}
