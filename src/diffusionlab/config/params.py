"""Typed, validated configuration loaded from ``params.yaml``: every section, the model blocks among them.

Every section maps onto a frozen pydantic model that checks each key's type and range and rejects unknown
keys; :class:`Params` checks the sections against each other. A failure is one :class:`ConfigError` line
naming the key (:mod:`diffusionlab.validation`), so that a stage stops before any work starts. The model
blocks are the union of the families' params (:mod:`diffusionlab.families.params`): this module imports
no noise process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from ..captions import parse_held_out
from ..datasets import CLASS_NAMES, NUM_CLASSES, DataConfig, DatasetName, ImageSize
from ..errors import ConfigError
from ..families.params import PARAMS, ModelParams
from ..nn.autoencoder import AutoencoderConfig
from ..nn.classifier import RESNET, ClassifierConfig
from ..nn.clip import TextEncoderConfig
from ..nn.dit import DiTConfig
from ..nn.networks import NetworkName
from ..nn.unet import UNetConfig
from ..validation import Count, Section, deep_merge, read_yaml, replace, validate
from .sampling import RestoreConfig, SampleConfig
from .sections import DEFAULT_BUDGET, EvaluateConfig, MlflowConfig, PipelineConfig, TrainConfig, apply_protocol


BudgetName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]
FIXED_BY_BUDGET = ("image_size", "budget", "budgets")
"""Keys a budget block cannot set: it sizes the models and their training, not the data (every budget trains and
scores on the same prepared images, so their runs are comparable with the same real-data floor)."""


class DatasetConfig(Section):
    """A ``datasets.<name>`` block: the image size the data is prepared at, and how models train on it.

    ``budget`` names the size it runs at: ``default`` (the block as written) or one of its ``budgets`` blocks,
    whose keys replace the block's (nested ones key by key) before anything runs (:func:`apply_budgets`). The
    resolved block keeps the name, which the runs record."""

    budget: BudgetName = DEFAULT_BUDGET
    image_size: ImageSize
    train_steps: Count
    batch_size: Count
    network: NetworkName = "unet"
    """The backbone of the models trained on it (a model block's own ``network`` takes precedence)."""
    unet: UNetConfig = UNetConfig()
    dit: DiTConfig = DiTConfig()
    random_flip: bool = False

    @model_validator(mode="after")
    def _unet_fits_the_image(self) -> DatasetConfig:
        levels, size = len(self.unet.channel_mult), self.image_size
        if size % 2 ** (levels - 1):
            raise ValueError(f"image_size {size} is not divisible by {2 ** (levels - 1)}, the U-Net's downsampling "
                             f"({levels} levels in unet.channel_mult); change image_size or unet.channel_mult")
        resolutions = [size // 2**i for i in range(levels)]
        for res in [r for r in self.unet.attention_resolutions if r not in resolutions][:1]:
            raise ValueError(f"unet.attention_resolutions has {res}, but the U-Net's feature maps are "
                             f"{resolutions}; use resolutions from that list")
        if self.network == "dit":
            problem = self.dit_problem()
            if problem:
                raise ValueError(problem)
        return self

    def dit_problem(self) -> str | None:
        """Why the transformer cannot cut this dataset's images into patches, if it cannot."""
        p, size = self.dit.patch_size, self.image_size
        if size % p:
            return (f"dit.patch_size {p} does not divide the image size {size}; use a divisor of {size} "
                    f"(such as {max(d for d in range(1, p) if size % d == 0)})")
        return None


FAMILY_DEFAULT = "the family's default sampler"
"""Where :meth:`Params.sampler_of` says a sampler comes from when ``sample.sampler`` cannot draw from a family."""

_OLD_MODEL_DEFAULTS = {"schedule": "linear", "vlb_weight": 0.001, "importance_sampling": False, "gamma": "network",
                       "gamma_min": -13.3, "gamma_max": 5.0, "weighting": "elbo", "sigmoid_bias": 2.0,
                       "noise_sampling": "schedule", "prediction": "eps"}
"""Checkpoints written before the families had params of their own hold every family's keys, mostly these."""


class RunConfig(Section):
    """Everything one (dataset, model) combination reads: saved in its checkpoint and logged to MLflow."""

    dataset: DatasetName
    model_name: str
    data: DatasetConfig
    model: ModelParams
    train: TrainConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    text_encoder: TextEncoderConfig | None = None
    """The text encoder of a text-conditioned model (``text_encoder``); None for any other."""

    @property
    def text_shape(self) -> tuple[int, int] | None:
        """(1 + L, D) of the condition a text-conditioned network takes; None for any other."""
        te = self.text_encoder
        return (1 + te.context_length, te.width) if te is not None else None

    @property
    def autoencoder(self) -> AutoencoderConfig | None:
        """The autoencoder of a latent model (its block's ``autoencoder``); None for a model on pixels."""
        return self.model.autoencoder

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model_name}"

    @property
    def model_size(self) -> int:
        """The side of what the network sees: the image, or the latent (image / f) of a latent model."""
        return self.data.image_size // (self.autoencoder.factor if self.autoencoder else 1)

    @property
    def unet(self) -> UNetConfig:
        """The U-Net's config: the dataset's, without the levels a latent model's latent cannot be halved for."""
        return latent_unet(self.data, self.autoencoder) if self.autoencoder else self.data.unet

    @property
    def network(self) -> NetworkName:
        """The backbone: the model block's ``network``, else the dataset's."""
        return self.model.network or self.data.network

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        model = raw.get("model") if isinstance(raw, dict) else None
        if isinstance(model, dict) and "latent" in model:  # written when the autoencoder was a section of its own
            model = {k: v for k, v in model.items() if k != "latent"} | (
                {"autoencoder": raw.get("autoencoder")} if model["latent"] else {})
            raw = {k: v for k, v in raw.items() if k != "autoencoder"} | {"model": model}
        if isinstance(model, dict) and model.get("family") in PARAMS:
            own = PARAMS[model["family"]].model_fields
            raw = {**raw, "model": {k: v for k, v in model.items() if v is not None and (
                k in own or _OLD_MODEL_DEFAULTS.get(k, ...) != v)}}
        return validate(cls, raw)


class Params(Section):
    pipeline: PipelineConfig = PipelineConfig()
    data: DataConfig = DataConfig()
    datasets: dict[DatasetName, DatasetConfig] = Field(default_factory=dict)
    models: dict[str, ModelParams] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    resnet: ClassifierConfig = RESNET
    evaluate: EvaluateConfig = EvaluateConfig()
    restore: RestoreConfig = RestoreConfig()
    mlflow: MlflowConfig = MlflowConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, raw: Any) -> Any:
        return apply_budgets(apply_protocol(raw))

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        s, nproc = self.sample, self.train.nproc_per_node
        if s.draws < 2 and self.evaluate.protocol != "paper":
            raise ValueError("sample.draws is 1: every score is a mean with its spread over at least 2 draws; one "
                             "draw is the published numbers' protocol: evaluate.protocol: paper")
        for kind, names, defined in (("datasets", self.pipeline.datasets, self.datasets),
                                     ("models", self.pipeline.models, self.models)):
            for name in [n for n in names if n not in defined][:1]:
                raise ValueError(f"pipeline.{kind} lists '{name}' but params.yaml has no {kind}.{name} block "
                                 f"(defined: {', '.join(sorted(defined)) or 'none'})")
        for name in self.pipeline.datasets:
            if self.datasets[name].batch_size % nproc:
                raise ValueError(f"datasets.{name}.batch_size {self.datasets[name].batch_size} does not divide among "
                                 f"train.nproc_per_node = {nproc} processes; the batch size is global: make it a "
                                 f"multiple of {nproc}")
        if s.ema_widths and not self.train.phema_widths:
            raise ValueError(f"sample.ema_widths {list(s.ema_widths)} are rebuilt from post-hoc EMA snapshots, which "
                             "training saves only with train.phema_widths set: set it (e.g. [0.05, 0.10]) and retrain, "
                             "or empty sample.ema_widths")
        for name in [n for n in s.sampler_for if n not in self.models][:1]:
            raise ValueError(f"sample.sampler_for names '{name}' but params.yaml has no models.{name} block "
                             f"(defined: {', '.join(sorted(self.models)) or 'none'})")
        for name in self.pipeline.models:
            model, kind = self.models[name], type(self.models[name])
            sampler, key = self.sampler_of(name)
            if sampler not in kind.SAMPLERS:
                raise ValueError(f"{key} '{sampler}' cannot draw from models.{name} (family '{model.family}'); its "
                                 f"samplers: {', '.join(kind.SAMPLERS)}")
            if s.step_list and sampler not in ("ddpm", "ddim"):
                raise ValueError(f"sample.step_list applies to the ddpm and ddim samplers, but {key} is "
                                 f"'{sampler}': empty sample.step_list")
            if s.classes and model.text_conditional:
                raise ValueError(f"sample.classes asks for classes {list(s.classes)}, but models.{name} is "
                                 "text-conditioned: give it prompts (sample.prompts), or empty sample.classes")
            if s.classes and not model.class_conditional:
                raise ValueError(f"sample.classes asks for classes {list(s.classes)}, but models.{name} is "
                                 "unconditional: set class_conditional: true in its block (and retrain), or empty "
                                 "sample.classes")
            problem = grid_problem(s.grid, sampler, model.family, key, name)
            if problem:
                raise ValueError(problem)
            if s.churn > 0 and sampler == "heun" and model.family != "edm":
                raise ValueError(f"sample.churn {s.churn:g} raises the noise level between grid levels, which only an "
                                 f"edm model is evaluated at, but models.{name} is family '{model.family}': set "
                                 "sample.churn: 0, or give it its own sampler in sample.sampler_for")
            if s.step_list and not model.discrete:
                raise ValueError(f"sample.step_list names discrete steps, but models.{name} is a continuous-time "
                                 f"model (family '{model.family}'); use sample.steps, or empty sample.step_list")
        for dataset in self.pipeline.datasets:
            for name in self.pipeline.models:
                data, ae = self.datasets[dataset], self.models[name].autoencoder
                if ae is not None:
                    data, problem = latent_data(data, ae, f"models.{name}.autoencoder")
                    if problem:
                        raise ValueError(f"models.{name} (a latent model) on datasets.{dataset}: {problem}")
                problem = network_problem(s, data, self.models[name].network)
                if problem:
                    on = f"the {data.image_size}-pixel latents of " if ae is not None else ""
                    raise ValueError(f"models.{name} on {on}datasets.{dataset}: {problem}")
        for name in self.pipeline.datasets:
            bad = [c for c in s.classes if not 0 <= c < NUM_CLASSES[name]]
            if bad:
                raise ValueError(f"sample.classes holds {bad}, but {name} has classes 0..{NUM_CLASSES[name] - 1}")
        for name, total in ((n, m.timesteps) for n, m in self.models.items() if m.discrete):
            late, over = [t for t in s.step_list if t >= total], [n for n in s.sweep_steps if n > total]
            if late:
                raise ValueError(f"sample.step_list holds {late} but models.{name} has steps 0..{total - 1}")
            what = f"sample.steps is {s.steps}" if (s.steps or 0) > total else \
                f"sample.sweep_steps holds {over}" if over else ""
            if what:
                raise ValueError(f"{what} but models.{name}.timesteps is {total}; a sampler cannot take more steps "
                                 "than the model has")
        if self.text_models():
            for name in self.pipeline.datasets:
                parse_held_out(self.text_encoder.held_out, CLASS_NAMES[name])
            pretrained = self.text_encoder.pretrained
            if pretrained and not (Path(pretrained) / "config.json").is_file():
                raise ValueError(f"text_encoder.pretrained {pretrained} holds no config.json: give a folder that "
                                 "transformers' save_pretrained wrote with a CLIP text model and its tokenizer, or "
                                 "null to train the text encoder")
        restoring = self.restore.models if self.restore.tasks else ()  # without a task there is no restore stage
        for name in [m for m in restoring if m not in self.pipeline.models][:1]:
            raise ValueError(f"restore.models lists '{name}', which pipeline.models ({', '.join(self.pipeline.models)}) "
                             "does not: a model restores once it is trained; add it to pipeline.models or drop it from "
                             "restore.models")
        for name in [m for m in restoring if self.models[m].text_conditional][:1]:
            raise ValueError(f"restore.models lists '{name}', a text-conditioned model: the solvers take a class or no "
                             "condition as their prior; drop it from restore.models")
        for name in [m for m in restoring if self.models[m].latent][:1]:
            raise ValueError(f"restore.models lists '{name}', a latent model: the solvers measure and restore pixels; "
                             "drop it from restore.models")
        for name in self.pipeline.datasets:
            problem = restore_problem(self.restore, self.datasets[name].image_size)
            if problem:
                raise ValueError(f"{problem} of datasets.{name} ({self.datasets[name].image_size} pixels)")
        return self

    def run(self, dataset: str, model: str) -> RunConfig:
        """The resolved configuration of one (dataset, model) combination."""
        if dataset not in self.datasets:
            raise ConfigError(f"unknown dataset '{dataset}': params.yaml defines {sorted(self.datasets)}")
        if model not in self.models:
            raise ConfigError(f"unknown model '{model}': params.yaml defines {sorted(self.models)}")
        sampler, _ = self.sampler_of(model)
        sample = self.sample if sampler == self.sample.sampler else replace(self.sample, sampler=sampler)
        if self.models[model].latent and sample.clip_denoised:
            sample = replace(sample, clip_denoised=False)  # a latent has no range to clip x0 to, as pixels have
        data, steps = self.datasets[dataset], self.models[model].train_steps
        if steps is not None:
            data = data.model_copy(update={"train_steps": steps})
        text = self.text_encoder if self.models[model].text_conditional else None
        return RunConfig(dataset=dataset, model_name=model, data=data, model=self.models[model],
                         train=self.train, sample=sample, evaluate=self.evaluate, text_encoder=text)

    def text_models(self) -> list[str]:
        """The models of ``pipeline.models`` conditioned on captions."""
        return [m for m in self.pipeline.models if self.models[m].text_conditional]

    def sampler_of(self, model: str) -> tuple[str, str]:
        """The sampler that draws from ``models.<model>`` and the key it comes from: ``sample.sampler_for.<model>``
        when set, else ``sample.sampler`` when the family can use it, else the family's default (the first of its
        ``SAMPLERS``), so that every block listed in ``pipeline.models`` runs as typed."""
        s, kind = self.sample, type(self.models[model])
        if model in s.sampler_for:
            return s.sampler_for[model], f"sample.sampler_for.{model}"
        if s.sampler in kind.SAMPLERS:
            return s.sampler, "sample.sampler"
        return kind.SAMPLERS[0], FAMILY_DEFAULT

    def latent_models(self) -> list[str]:
        """The models of ``pipeline.models`` that train on the autoencoder's latents."""
        return [m for m in self.pipeline.models if self.models[m].latent]


def apply_budgets(raw: Any) -> Any:
    """Raw params with every dataset block at its ``budget``: the block's ``budgets.<budget>`` merged over it and
    ``budgets`` removed. Every budget block is checked (merged over the block, as a dataset block), the one in use
    or not, so that a typo in one is found before a run that selects it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict):
        return raw
    return {**raw, "datasets": {name: resolve_budget(name, block) if isinstance(block, dict) else block
                                for name, block in raw["datasets"].items()}}


def resolve_budget(name: str, block: dict[str, Any]) -> dict[str, Any]:
    """``datasets.<name>`` (raw) at its budget; raises :class:`ConfigError` naming the key of a bad budget."""
    missing = missing_keys(block)
    if missing:
        raise ConfigError(f"datasets.{name} has no {missing[0]}: a dataset block has no defaults, it writes every key "
                          f"(as params.yaml's datasets.digits does); add {missing[0]}")
    budgets = block.get("budgets") or {}
    base = {k: v for k, v in block.items() if k != "budgets"}
    where = f"datasets.{name}.budgets"
    if not isinstance(budgets, dict):
        raise ConfigError(f"{where} must be a mapping of budget names to blocks of keys, got {budgets!r}")
    for budget, over in budgets.items():
        if budget == DEFAULT_BUDGET:
            raise ConfigError(f"{where}.{DEFAULT_BUDGET}: the default budget is the block itself; give the budget "
                              "another name")
        if not isinstance(over, dict):
            raise ConfigError(f"{where}.{budget} must be a mapping of the block's keys to values, got {over!r}")
        for key in [k for k in over if k in FIXED_BY_BUDGET][:1]:
            raise ConfigError(f"{where}.{budget}.{key}: a budget sizes the models and their training, not the data; "
                              f"set datasets.{name}.{key} itself")
        try:
            validate(DatasetConfig, deep_merge(base, over) | {"budget": budget})
        except ConfigError as err:
            raise ConfigError(f"{where}.{budget} (over datasets.{name}): {err}") from None
    chosen = base.get("budget", DEFAULT_BUDGET)
    if chosen == DEFAULT_BUDGET or not isinstance(chosen, str):
        return base
    if chosen not in budgets:
        known = ", ".join([DEFAULT_BUDGET, *budgets])
        raise ConfigError(f"datasets.{name}.budget is '{chosen}', but datasets.{name} has no budgets.{chosen} "
                          f"block; its budgets: {known}")
    return deep_merge(base, budgets[chosen])


def missing_keys(block: dict[str, Any]) -> list[str]:
    """The keys of a raw ``datasets.<name>`` block that it does not write, dotted (``unet.dropout``), in the order
    :class:`DatasetConfig` declares them: every key but ``budget`` (``default`` when absent) and ``budgets``."""
    missing = []
    for key, field in DatasetConfig.model_fields.items():
        if key == "budget":
            continue
        if key not in block:
            missing.append(key)
        elif isinstance(field.default, Section) and isinstance(block[key], dict):
            missing += [f"{key}.{k}" for k in type(field.default).model_fields if k not in block[key]]
    return missing


def latent_data(data: DatasetConfig, ae: AutoencoderConfig, key: str = "autoencoder") -> tuple[DatasetConfig, str | None]:
    """The dataset's block at the autoencoder's latent size, and what keeps its backbone from that size, if
    anything (``key``: where the autoencoder's params are, in the message). The U-Net keeps the levels of
    ``unet.channel_mult`` that the latent can be halved for (MNIST's 28-pixel images give 14-pixel latents at
    f = 2: two levels of the three)."""
    f, size = ae.factor, data.image_size
    if size % f:
        return data, f"{key}.factor {f} does not divide the image size {size}"
    raw = {**data.model_dump(), "image_size": size // f, "unet": latent_unet(data, ae).model_dump()}
    try:
        return DatasetConfig.model_validate(raw), None
    except ValidationError as err:
        first = err.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, first["loc"]))
        reason = f"{where} would be {size // f}: {reason}" if where == "image_size" else reason
        return data, (f"its backbone does not fit the {size // f}-pixel latent of {key}.factor {f}: {reason}; "
                      f"use a smaller {key}.factor")


def latent_unet(data: DatasetConfig, ae: AutoencoderConfig) -> UNetConfig:
    """The dataset's U-Net without the trailing levels of ``unet.channel_mult`` that the ``image_size / f`` latent
    cannot be halved for."""
    mult, size = list(data.unet.channel_mult), data.image_size // ae.factor
    while len(mult) > 1 and size % 2 ** (len(mult) - 1):
        mult.pop()
    return data.unet.model_copy(update={"channel_mult": tuple(mult)})


def network_problem(s: SampleConfig, data: DatasetConfig, network: NetworkName | None) -> str | None:
    """What makes the backbone ``network`` (None: the dataset's) unusable on ``data`` or with the
    sampling params ``s``, if anything."""
    network = network or data.network
    if network == "unet":
        if s.skips_layers:
            return (f"sample.slg_scale {s.slg_scale:g} asks for skip-layer guidance, which skips transformer blocks, "
                    "but the model is a U-Net; set sample.slg_scale: 0, or network: dit in its models block")
        return None
    problem = data.dit_problem()
    if problem:
        return f"the transformer (network: {network}) cannot take its images: {problem}"
    late = [i for i in s.slg_layers if i >= data.dit.depth] if s.skips_layers else []
    if late:
        return (f"sample.slg_layers holds {late}, but the transformer has blocks 0..{data.dit.depth - 1} "
                "(dit.depth)")
    return None


def grid_problem(grid: str, sampler: str, family: str, key: str = "sample.sampler",
                 name: str = "the model") -> str | None:
    """What makes ``sample.grid`` unusable for ``sampler`` (named by ``key``) on models.``name`` of ``family``, if
    anything: the Karras grid is for euler, heun and the DPM-Solvers, on every family but the flow."""
    if grid != "karras":
        return None
    if sampler in ("ddpm", "ddim"):
        return (f"sample.grid: karras applies to euler, heun and the DPM-Solvers, but {key} is '{sampler}', which "
                "takes evenly spaced steps or sample.step_list: set sample.grid: default, or another sampler")
    if family == "flow":
        return (f"sample.grid: karras cannot place models.{name}'s levels: a flow's sigma / alpha is infinite at "
                "t = 1; set sample.grid: default, or leave the flow out")
    return None


def restore_problem(r: RestoreConfig, size: int) -> str | None:
    """What makes ``restore``'s tasks impossible on images of ``size`` pixels, if anything."""
    for task, factor in (("sr2", 2), ("sr4", 4)):
        if task in r.tasks and size % factor:
            return f"restore.tasks has {task}, whose factor {factor} does not divide the image size"
    radius = max(1, math.ceil(3 * r.blur_width))
    if "blur" in r.tasks and r.blur_boundary == "reflect" and radius >= size:
        return (f"restore.blur_width {r.blur_width:g} gives a kernel of radius {radius}, which cannot reflect "
                "(restore.blur_boundary) in the image size")
    return None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate ``params.yaml``; raises :class:`ConfigError` naming the offending key."""
    return parse_params(read_yaml(path))


def parse_params(raw: dict[str, Any]) -> Params:
    return validate(Params, raw)
