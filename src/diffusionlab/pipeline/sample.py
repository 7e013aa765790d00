"""Stage sample@<dataset>-<model>: :func:`draw` computes the samples, :func:`publish` writes and logs them."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..captions import AttributePrompt, attribute_prompts, load_captions, prompt_class
from ..chunks import ChunkFolder, Meter, file_digest, map_chunks, prune, source_digest
from ..config.params import FAMILY_DEFAULT, Params, RunConfig
from ..config.sampling import SampleConfig
from ..core.process import SamplerOptions
from ..datasets import PreparedDataset, load_prepared
from ..device import autocast_dtype, device_name, make_generator, precision_name
from ..distributed import World
from ..families import samplers as _own_samplers  # noqa: F401  (the samplers the processes build)
from ..io import atomic_dir, save_npy, write_json
from ..runtime.autoencoding import reconstruct
from ..runtime.checkpoint import Checkpoint, load_checkpoint, load_phema_snapshots, phema_weights
from ..runtime.tracking import Tracker, open_run
from ..sampling.base import Sampler
from ..sampling.generation import Generated, draw_images, trajectory_of
from ..sampling.guidance import ConditionalModel, SkipLayerGuidance, requested_labels
from ..sampling.inverse import inpaint, round_trip
from ..sampling.names import ONE_STEP_SAMPLERS, network_evaluations
from ..sampling.samplers import make_sampler
from ..tensors import to_model_range
from ..text import cycled
from ..validation import replace
from ..viz.figures import denoising_gif, forward_process_figure, panels_figure, reverse_process_figure
from ..viz.images import save_grid, save_strip
from .world import in_world

log = logging.getLogger(__name__)
FIGURE_IMAGES = 6
"""Held-out images shown in the inpainting and round-trip figures."""


FRAME_IMAGES = 16
"""Images whose trajectory the figures show (denoising.gif's grid; the strip and reverse figures show fewer)."""
PARTIAL = "partial"
"""Folder of the sample stage's finished chunks, beside its outputs: what a killed run resumes from."""


@dataclass
class Setting:
    """One set of images the stage draws: the main setting, a sweep step count, a guidance scale or an EMA width."""

    name: str
    model: ConditionalModel
    sampler: Sampler
    key: dict
    """Everything the images depend on: a changed key never reuses another key's finished chunks."""
    per_draw: int
    """Images of each draw."""
    conditions: np.ndarray | None = None
    """What this setting's images of one draw are conditioned on, when not the main setting's."""

    @property
    def evaluations(self) -> int:
        """Network evaluations per image."""
        w = self.model.w if self.model.net.conditional else None
        return network_evaluations(self.sampler.steps, w, self.key["options"]["sampler"])


@dataclass
class Samples:
    """What the sample stage drew: every draw of the main setting (one after another), the step and guidance
    sweeps, the classes asked for and the time each setting took."""

    model: ConditionalModel
    """The EMA network and its process, guided at ``sample.guidance``."""
    generated: Generated
    """The main setting's images uint8 [draws * num_samples, C, H, W] and the trajectory of its first images."""
    labels: np.ndarray | None
    """The class asked of each image (for a text model the class its prompt names, or -1); None for an unconditional
    model."""
    steps: int
    sweep: dict[int, np.ndarray] = field(default_factory=dict)
    guidance: dict[float, np.ndarray] = field(default_factory=dict)
    ema: dict[float, np.ndarray] = field(default_factory=dict)
    """The main setting's images from the EMA of each width of ``sample.ema_widths``."""
    seconds: dict[int, float] = field(default_factory=dict)
    """Sampling time of the images of each step count drawn by this run (resumed chunks excluded)."""
    drawn: dict[int, int] = field(default_factory=dict)
    """Images of each step count drawn by this run."""
    processes: int = 1
    prompts: list[str] | None = None
    """A text model's prompt of each image of one draw (every draw asks the same); None for any other."""
    attributes: np.ndarray | None = None
    """A text model's images of the attribute prompts (:func:`attribute_requests`), every draw one after another."""
    attribute_prompts: list[str] = field(default_factory=list)
    """The prompt of each image of one draw of ``attributes``."""


def attribute_requests(ckpt: Checkpoint, s: SampleConfig, prepared: Path, class_names: list[str]
                       ) -> list[AttributePrompt]:
    """A text model's ``sample.attribute_samples`` prompts of one draw that ask for one word of an attribute of a
    class (:func:`attribute_prompts`, in turn); none for another model, with ``sample.attribute_samples: 0`` or when
    the dataset's captions are one's own."""
    if ckpt.text is None or not s.attribute_samples:
        return []
    captions = load_captions(prepared)
    if captions.source != "measured":
        return []
    return cycled(attribute_prompts(class_names, captions.names), s.attribute_samples)


def ema_networks(run: RunConfig, ckpt: Checkpoint) -> dict[float, torch.nn.Module]:
    """The checkpoint's network with the weights of the EMA of each width of ``sample.ema_widths``, rebuilt from
    the train stage's post-hoc EMA snapshots (:func:`phema_weights`)."""
    widths = run.sample.ema_widths
    snapshots = load_phema_snapshots(paths.phema(run.dataset, run.model_name)) if widths else []
    out = {}
    for width in widths:
        net = copy.deepcopy(ckpt.ema)
        net.load_state_dict(phema_weights(snapshots, width)[0])
        out[width] = net.eval()
    return out


def settings(run: RunConfig, ckpt: Checkpoint, sampler: Sampler, identity: dict,
             emas: dict[float, torch.nn.Module] | None = None, autocast: torch.dtype | None = None,
             attributes: list[AttributePrompt] = ()) -> list[Setting]:
    """The main setting (``sample.sampler`` at ``sample.steps``, guided at ``sample.guidance``), each of
    ``sample.sweep_steps``, for a class-conditional model each of ``sample.guidance_sweep``, the main setting
    from each rebuilt EMA of ``emas`` (:func:`ema_networks`), and a text model's ``attributes`` prompts
    (:func:`attribute_requests`) at the main setting, each evaluating its network under ``autocast`` (None: fp32);
    ``identity`` (the checkpoint's and the code's digests, the precision) joins every key."""
    s = run.sample
    conditional = ckpt.ema.conditional
    size = ckpt.config.model_size
    common = {**identity, "shape": [ckpt.channels, size, size], "seed": s.seed, "num_samples": s.num_samples,
              "draws": s.draws, "classes": list(s.classes), "batch_size": s.batch_size,
              **({"prompts": list(s.prompts)} if ckpt.text is not None else {})}

    def setting(name: str, options: SampleConfig, built: Sampler, w: float,
                network: torch.nn.Module | None = None, asked: list[AttributePrompt] = ()) -> Setting:
        slg = SkipLayerGuidance.of(options)
        net = ConditionalModel(network or ckpt.ema, ckpt.process, ckpt.channels, w, slg, ckpt.decode(), autocast)
        key = {**common, "setting": name, "options": asdict(SamplerOptions.of(options)), "steps": built.steps,
               "guidance": w if conditional else None, **({"skip_layer_guidance": asdict(slg)} if slg else {}),
               **({"prompts": [a.prompt for a in asked], "num_samples": len(asked)} if asked else {})}
        conditions = ckpt.text.conditions([a.prompt for a in asked]) if asked else None
        return Setting(name, net, built, key, len(asked) or s.num_samples, conditions)

    out = [setting("main", s, sampler, s.guidance)]
    for n in sorted(set(s.sweep_steps) - {sampler.steps}):
        options = replace(s, steps=n, step_list=())
        out.append(setting(f"steps_{n}", options, make_sampler(options, ckpt.process, n), s.guidance))
    if s.guidance_sweep and not conditional:
        log.info("%s is unconditional: sample.guidance_sweep does not apply", run.name)
    for w in sorted(set(s.guidance_sweep) - {s.guidance}) if conditional else []:
        out.append(setting(f"guidance_{w:g}", s, sampler, w))
    for width, network in (emas or {}).items():
        out.append(setting(f"ema_{width:g}", s, sampler, s.guidance, network))
    if attributes:
        out.append(setting("attributes", s, sampler, s.guidance, asked=list(attributes)))
    return out


def requested(ckpt: Checkpoint, s: SampleConfig, class_names: list[str]
              ) -> tuple[np.ndarray, np.ndarray, list[str] | None] | None:
    """What each image of one draw is conditioned on, the class it asks for, and a text model's prompts: class labels
    (``sample.classes`` in turn, or every class) twice, or the conditions of ``sample.prompts`` in turn (or each
    class's caption), the classes they name (:func:`prompt_class`, -1 for none) and the prompts; None for an
    unconditional model."""
    if ckpt.text is not None:
        prompts = ckpt.text.prompts(s.num_samples, s.prompts)
        named = np.array([prompt_class(p, class_names) for p in prompts], dtype=np.int64)
        return ckpt.text.conditions(prompts), named, prompts
    if not ckpt.ema.num_classes:
        return None
    labels = requested_labels(s.num_samples, s.classes, ckpt.ema.num_classes)
    return labels, labels, None


def draw(run: RunConfig, ckpt: Checkpoint, sampler: Sampler, device: torch.device, world: World = World(),
         partial: Path | None = None, emas: dict[float, torch.nn.Module] | None = None,
         class_names: list[str] | None = None, attributes: list[AttributePrompt] = ()) -> Samples | None:
    """Draw ``sample.draws`` independent draws of ``sample.num_samples`` samples (one after another) from the EMA
    weights with ``sampler`` (``sample.sampler`` at ``sample.steps``), at each of ``sample.sweep_steps``, for a
    class-conditional model at each of ``sample.guidance_sweep``, from each rebuilt EMA of ``emas``, and a text
    model's ``attributes`` prompts (:func:`settings`).

    ``class_names`` are the dataset's, for the class a prompt names.

    Every process of ``world`` draws its share of each setting's batches; rank 0 gathers them and returns the
    samples (the others None). With ``partial`` each finished batch is saved there first, and a run after a kill
    draws only the batches still missing."""
    s = run.sample
    total = s.num_samples * s.draws  # the draws, one after another: each asks for the same classes
    asked = requested(ckpt, s, class_names or [str(i) for i in range(10)])
    labels = None if asked is None else np.tile(asked[0], (s.draws, *[1] * (asked[0].ndim - 1)))
    size = ckpt.config.model_size
    shape = (ckpt.channels, size, size)  # a latent model draws latents, decoded into images batch by batch
    autocast = autocast_dtype(s.bf16, device)
    identity = {"checkpoint": file_digest(paths.train(run.dataset, run.model_name) / "checkpoint.pt")
                if partial is not None else None, "code": source_digest(), "device": device.type,
                "precision": precision_name(autocast)}
    plan = settings(run, ckpt, sampler, identity, emas, autocast, attributes)
    folders = [ChunkFolder(partial, st.key) if partial is not None else None for st in plan]
    if world.is_main and partial is not None:
        prune(partial, [f for f in folders if f is not None])
    totals = [st.per_draw * s.draws for st in plan]
    resumed = [min(len(f.done()) * s.batch_size, n) if f else 0 for f, n in zip(folders, totals)]
    meter = Meter(run.name, {st.name: (n, r, st.evaluations) for st, n, r in zip(plan, totals, resumed)}, world)
    if world.is_main:
        log.info("%s: %d setting(s), %d images in all, on %d process(es) in %s%s: %s network evaluations to make",
                 run.name, len(plan), sum(totals), world.size, identity["precision"],
                 f", {sum(resumed)} images from finished batches" if any(resumed) else "", f"{meter.left():,}")
    images, seconds = {}, {}
    for st, folder, n in zip(plan, folders, totals):
        own = None if st.conditions is None else np.tile(st.conditions, (s.draws, *[1] * (st.conditions.ndim - 1)))

        def compute(rows: slice, st: Setting = st, own: np.ndarray | None = own) -> np.ndarray:
            return draw_images(st.model, st.sampler, np.arange(rows.start, rows.stop), st.per_draw, shape,
                               s.batch_size, device, s.seed, labels if own is None else own)

        with meter.progress(st.name) as on_chunk:
            start = time.perf_counter()
            images[st.name] = map_chunks(n, s.batch_size, compute, world, folder, on_chunk)
            seconds[st.name] = time.perf_counter() - start
    if not world.is_main:
        return None
    main = plan[0]
    trajectory = trajectory_of(main.model, main.sampler, min(total, max(FRAME_IMAGES, s.strip_samples)),
                               s.num_samples, shape, device, s.seed, s.strip_frames, labels)
    classes = None if asked is None else np.tile(asked[1], s.draws)
    samples = Samples(main.model, Generated(images["main"], trajectory), classes, sampler.steps,
                      seconds={sampler.steps: seconds["main"]}, drawn={sampler.steps: meter.drawn["main"]},
                      processes=world.size, prompts=None if asked is None else asked[2])
    widths = {f"ema_{width:g}": width for width in emas or {}}
    for st in plan[1:]:
        if st.name.startswith("steps_"):
            samples.sweep[st.sampler.steps] = images[st.name]
            samples.seconds[st.sampler.steps], samples.drawn[st.sampler.steps] = seconds[st.name], meter.drawn[st.name]
        elif st.name in widths:
            samples.ema[widths[st.name]] = images[st.name]
        elif st.name == "attributes":
            samples.attributes, samples.attribute_prompts = images[st.name], [a.prompt for a in attributes]
        else:
            samples.guidance[st.model.w] = images[st.name]
    return samples


def sample_stage(params: Params, dataset: str, model: str) -> None:
    """Draw the samples of one model (:func:`draw`), its figures, and write and log them (:func:`publish`). The
    inputs are read and the sampler built before the MLflow run opens: a missing input fails no run.

    With ``sample.nproc_per_node`` > 1 (or under torchrun) the processes share the images and rank 0 writes them.
    Finished batches are kept in ``partial/`` beside the outputs until the stage ends: run again after a kill, it
    draws only the batches still missing and ends with the files an uninterrupted run writes."""
    run = params.run(dataset, model)
    if params.sampler_of(model)[1] == FAMILY_DEFAULT and os.environ.get("RANK", "0") == "0":
        log.warning("sample.sampler '%s' cannot draw from models.%s (family '%s'): it samples with %s '%s' (name "
                    "another in sample.sampler_for.%s)", params.sample.sampler, model, run.model.family,
                    FAMILY_DEFAULT, run.sample.sampler, model)
    if run.evaluate.protocol == "paper" and os.environ.get("RANK", "0") == "0":
        # the scores of the published numbers' protocol need the Inception weights: missing, nothing is sampled
        from ..evaluation.features import ensure_inception_weights

        ensure_inception_weights(run.evaluate.inception_weights, params.data.download_timeout)
    in_world(params, run.sample.nproc_per_node, "sample.nproc_per_node", lambda world, device: _sample(
        params, run, world, device))


def _sample(params: Params, run: RunConfig, world: World, device: torch.device) -> None:
    dataset, model, out = run.dataset, run.model_name, paths.sample(run.dataset, run.model_name)
    ckpt = load_checkpoint(paths.train(dataset, model) / "checkpoint.pt", device)
    held_out = load_prepared(paths.prepared(dataset))
    sampler = make_sampler(run.sample, ckpt.process, default_steps=ckpt.config.model.timesteps)
    emas = ema_networks(run, ckpt)
    names = held_out.card.class_names
    attributes = attribute_requests(ckpt, run.sample, paths.prepared(dataset), names)
    if not world.is_main:
        draw(run, ckpt, sampler, device, world, out / PARTIAL, emas, names, attributes)
        return
    with open_run(params.mlflow, run, device, device_name(device), previous=paths.train(dataset, model)) as tracker:
        samples = draw(run, ckpt, sampler, device, world, out / PARTIAL, emas, names, attributes)
        publish(samples, run, ckpt, held_out.test_images, figure_conditions(ckpt, held_out), device, tracker,
                params.sampler_of(model)[1])
    shutil.rmtree(out / PARTIAL, ignore_errors=True)


def figure_conditions(ckpt: Checkpoint, held_out: PreparedDataset) -> np.ndarray | None:
    """What the figures' held-out images are conditioned on: their labels, their captions' conditions (the first
    phrasing) for a text model, or None for an unconditional model."""
    if ckpt.text is not None:
        captions = load_captions(paths.prepared(ckpt.config.dataset)).test[:FIGURE_IMAGES]
        return ckpt.text.conditions([c[0] for c in captions])
    return held_out.test_labels if ckpt.ema.num_classes else None


def prompt_rows(prompts: list[str], shown: int) -> tuple[np.ndarray, int]:
    """The order of the first ``shown`` images that puts each prompt on a row of its own, and the row length."""
    distinct = list(dict.fromkeys(prompts[:shown]))
    index = np.array([distinct.index(p) for p in prompts[:shown]])
    per_row = int(np.bincount(index).min())
    order = np.concatenate([np.flatnonzero(index == k)[:per_row] for k in range(len(distinct))])
    return order, per_row


def publish(samples: Samples, run: RunConfig, ckpt: Checkpoint, images: np.ndarray, conditions: np.ndarray | None,
            device: torch.device, tracker: Tracker, sampler_from: str = "sample.sampler") -> None:
    """Write the samples, their requested classes, a grid, sample.json and the figures (drawn here from the
    held-out ``images`` and their ``conditions``, :func:`figure_conditions`), and log them to the stage's MLflow
    run. A text model's grid has a row per prompt, and its prompts go to sample.json and MLflow. ``sampler_from``
    says where the sampler came from (:meth:`Params.sampler_of`)."""
    s, out = run.sample, paths.sample(run.dataset, run.model_name)
    total, generated = s.num_samples * s.draws, samples.generated
    with atomic_dir(out / "sweep") as sweep_dir:
        for n, drawn in samples.sweep.items():
            save_npy(sweep_dir / f"steps_{n}.npy", drawn)
    with atomic_dir(out / "guidance") as guidance_dir:
        for w, drawn in samples.guidance.items():
            save_npy(guidance_dir / paths.guidance_samples(run.dataset, run.model_name, w).name, drawn)
    with atomic_dir(out / "ema") as ema_dir:
        for width, drawn in samples.ema.items():
            save_npy(ema_dir / paths.ema_samples(run.dataset, run.model_name, width).name, drawn)
    save_npy(out / "samples.npy", generated.images)
    with atomic_dir(paths.attribute_samples(run.dataset, run.model_name)) as attributes_dir:
        if samples.attributes is not None:
            save_npy(attributes_dir / "samples.npy", samples.attributes)
            save_grid(torch.from_numpy(samples.attributes[:len(dict.fromkeys(samples.attribute_prompts))]),
                      attributes_dir / "grid.png", nrow=len(ckpt.text.class_prompts))
    save_npy(out / "labels.npy", np.full(total, -1, dtype=np.int64) if samples.labels is None else samples.labels)
    num_classes, conditional = ckpt.ema.num_classes, ckpt.ema.conditional
    if samples.prompts is not None:
        order, nrow = prompt_rows(samples.prompts, min(s.grid_size, s.num_samples))
        save_grid(torch.from_numpy(generated.images[order]), out / "grid.png", nrow=nrow)
    else:
        nrow = num_classes if num_classes and not s.classes else None
        shown = s.grid_size if nrow is None else max(nrow, s.grid_size // nrow * nrow)  # whole rows of classes
        save_grid(torch.from_numpy(generated.images[:shown]), out / "grid.png", nrow=nrow)
    with atomic_dir(out / "figures") as figures:
        save_strip(generated.trajectory.x_t, figures / "denoising.png", rows=s.strip_samples)
        draw_figures(ckpt, samples.model, s, images, conditions, generated, figures, device)
    steps, seconds = samples.steps, samples.seconds
    precision = precision_name(samples.model.autocast)
    rates = {n: samples.drawn[n] / sec for n, sec in seconds.items() if samples.drawn.get(n) and sec > 0}
    write_json(out / "sample.json", {
        "num_samples": s.num_samples, "draws": s.draws, "sampler": s.sampler, "sampler_from": sampler_from,
        "steps": steps,
        "sample_seconds": round(seconds[steps], 2), "images_drawn": samples.drawn[steps],
        "images_per_second": round(rates[steps], 2) if steps in rates else None, "processes": samples.processes,
        "sweep_steps": sorted(samples.sweep),
        "class_conditional": conditional, "guidance": s.guidance if conditional else None,
        "text_conditional": samples.prompts is not None,
        **({"prompts": list(s.prompts or ckpt.text.class_prompts)} if samples.prompts is not None else {}),
        **({"attribute_prompts": list(dict.fromkeys(samples.attribute_prompts)),
            "attribute_samples": len(samples.attribute_prompts)} if samples.attributes is not None else {}),
        "guidance_sweep": sorted(samples.guidance), "ema_widths": sorted(samples.ema), "precision": precision,
    })
    tracker.log_metrics({"sample_seconds": seconds[steps], **(
        {"sample_images_per_second": rates[steps]} if steps in rates else {})})
    for n, rate in sorted(rates.items()):
        tracker.log_metric("sample_images_per_second_vs_steps", rate, step=n)
    tracker.set_tags({"sampler": s.sampler, "sampler_from": sampler_from, "sampling_steps": steps,
                      "sample_precision": precision})
    if samples.prompts is not None:
        tracker.log_dict({"prompts": list(dict.fromkeys(samples.prompts)),
                          "rows_of_grid": "one prompt per row, in this order"}, "samples/prompts.json")
    tracker.log_artifact(out / "grid.png", artifact_path="samples")
    if samples.attributes is not None:
        tracker.log_dict({"prompts": list(dict.fromkeys(samples.attribute_prompts)),
                          "grid": "attributes/grid.png: a row per word, a column per class"},
                         "samples/attribute_prompts.json")
        tracker.log_artifact(paths.attribute_samples(run.dataset, run.model_name) / "grid.png",
                             artifact_path="samples/attributes")
    tracker.log_artifacts(out / "figures", artifact_path="samples")
    tracker.save_run_file(out)


def draw_figures(ckpt: Checkpoint, net: ConditionalModel, s: SampleConfig, images: np.ndarray,
                 conditions: np.ndarray | None, generated: Generated, folder: Path, device: torch.device) -> None:
    """forward.png (the model's own forward process), reverse.png and denoising.gif (x_t and predicted x_0 while
    sampling), inpainting.png (RePaint on held-out images, right half unknown) and round_trip.png (held-out
    images noised part of the way and denoised back); a latent model: reverse.png, denoising.gif and
    reconstructions.png (held-out images through its autoencoder)."""
    model, process = ckpt.config.model, ckpt.process
    trajectory = generated.trajectory
    reverse_process_figure([process.time_label(t) for t in trajectory.steps], trajectory.x_t, trajectory.pred_x0,
                           folder / "reverse.png")
    denoising_gif(trajectory.x_t, folder / "denoising.gif")
    if ckpt.codec is not None:  # noising, masks and round trips act on pixels; a latent model's act on its latents
        shown = images[:FIGURE_IMAGES]
        panels_figure({"image": to_model_range(torch.from_numpy(shown)),
                       "reconstruction": to_model_range(torch.from_numpy(reconstruct(ckpt.codec, shown)))},
                      folder / "reconstructions.png", f"its autoencoder, f = {ckpt.codec.config.factor}")
        return
    x0 = to_model_range(torch.from_numpy(images[:FIGURE_IMAGES])).to(device)
    forward_process_figure(x0[0].cpu(), process, folder / "forward.png")
    y = torch.from_numpy(conditions[:FIGURE_IMAGES]).to(device) if conditions is not None else None
    denoiser = net.denoiser(y)
    fallback = next(n for n in ONE_STEP_SAMPLERS if n in type(model).SAMPLERS)
    one_step = s if s.sampler in ONE_STEP_SAMPLERS else replace(s, sampler=fallback)
    sampler = make_sampler(one_step, process, default_steps=model.timesteps)
    mask = torch.ones_like(x0)
    mask[..., x0.shape[-1] // 2:] = 0
    generator = make_generator(device, s.seed)
    completed = inpaint(denoiser, sampler, x0, mask, generator, s.repaint_resample)
    panels_figure({"original": x0.cpu(), "known": (x0 * mask - (1 - mask)).cpu(), "inpainted": completed.cpu()},
                  folder / "inpainting.png", f"inpainting (RePaint, {s.repaint_resample} resamplings per step)")
    n = len(sampler.timesteps)
    columns = {"original": x0.cpu()}
    for start in sorted({n - 1 - n // 4, n // 2, n // 4}, reverse=True):
        columns[f"from {process.time_label(sampler.timesteps[start])}"] = round_trip(
            denoiser, sampler, x0, start, generator).cpu()
    panels_figure(columns, folder / "round_trip.png", "noised to t, denoised back")
