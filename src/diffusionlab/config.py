"""Typed, validated configuration loaded from ``params.yaml``.

Every section of ``params.yaml`` maps onto a frozen dataclass. Loading checks each key
for type and range, rejects unknown keys (suggesting the nearest valid one), and checks
settings that contradict each other, so that a stage stops before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import ConfigError

DatasetName = Literal["digits", "mnist", "cifar10"]
FeatureBackend = Literal["classifier", "resnet", "inception"]
FeatureNetwork = Literal["classifier", "resnet"]
"""The feature networks trained on each dataset (offline backends); each has its block in params.yaml."""
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}
LINEAR_MIN_TIMESTEPS = 21

def _range(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None) -> dict:
    return {"ge": ge, "gt": gt, "le": le, "lt": lt}


def _field(default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=_range(**bounds))
    return field(default=default, metadata=_range(**bounds))


@dataclass(frozen=True)
class PipelineConfig:
    datasets: tuple[DatasetName, ...] = ("digits",)
    models: tuple[str, ...] = ("ddpm",)


@dataclass(frozen=True)
class DataConfig:
    mirror: str | None = None
    """Folder or URL holding the original archive files; ``DIFFUSIONLAB_DATA_MIRROR`` overrides it."""
    download_timeout: float = _field(10.0, gt=0)
    digits_test_size: int = _field(297, ge=10, le=897)
    split_seed: int = _field(0, ge=0)


@dataclass(frozen=True)
class UNetConfig:
    base_channels: int = _field(64, ge=8, le=1024)
    channel_mult: tuple[int, ...] = _field((1, 2, 2), ge=1, le=16)
    num_res_blocks: int = _field(2, ge=1, le=8)
    attention_resolutions: tuple[int, ...] = _field((16,), ge=1)
    num_heads: int = _field(1, ge=1, le=32)
    dropout: float = _field(0.1, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class DatasetConfig:
    image_size: int = _field(ge=4, le=512)
    train_steps: int = _field(ge=1)
    batch_size: int = _field(ge=1)
    unet: UNetConfig = field(default_factory=UNetConfig)
    random_flip: bool = False

    def __post_init__(self) -> None:
        levels = len(self.unet.channel_mult)
        factor = 2 ** (levels - 1)
        if self.image_size % factor:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by {factor}, the U-Net's downsampling "
                f"({levels} levels in unet.channel_mult); change image_size or unet.channel_mult"
            )
        resolutions = [self.image_size // 2**i for i in range(levels)]
        for res in self.unet.attention_resolutions:
            if res not in resolutions:
                raise ConfigError(
                    f"unet.attention_resolutions has {res}, but the U-Net's feature maps are {resolutions}; "
                    "use resolutions from that list"
                )


FAMILY_DEFAULTS = {"ddpm": ("fixed_small", "simple"), "vlb": ("learned_range", "hybrid"), "vdm": (None, None)}


@dataclass(frozen=True)
class ModelConfig:
    """A model family and its settings.

    ``ddpm``: epsilon-prediction with a fixed reverse variance (``fixed_small`` or ``fixed_large``), L_simple.
    ``vlb``: learned reverse variance (``learned_range``), ``hybrid`` or pure ``vlb`` loss, optionally
    with importance sampling of t. ``vdm``: continuous time with the log-SNR schedule ``gamma``.
    """

    family: Literal["ddpm", "vlb", "vdm"] = "ddpm"
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = _field(1000, ge=2, le=100_000)
    """Discrete families: T. vdm: the default number of sampling steps."""
    variance: Literal["fixed_small", "fixed_large", "learned_range"] | None = None
    loss: Literal["simple", "hybrid", "vlb"] | None = None
    vlb_weight: float = _field(0.001, ge=0)
    importance_sampling: bool = False
    gamma: Literal["fixed", "scalar", "network"] = "network"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    weighting: Literal["elbo", "sigmoid", "v", "edm"] = "elbo"
    """vdm: the weighting w(lambda) of the diffusion loss over the log-SNR (Kingma & Gao 2023); ``elbo``
    trains on the bound itself. The bound is reported unweighted whatever the weighting."""
    sigmoid_bias: float = 2.0
    """vdm, weighting ``sigmoid``: b in w(lambda) = sigmoid(b - lambda)."""
    noise_sampling: Literal["schedule", "adaptive"] = "schedule"
    """vdm: draw t ~ U(0, 1) through the schedule gamma (``schedule``), or the log-SNR from a density that
    adapts to the weighted loss (``adaptive``, Kingma & Gao 2023; needs gamma: fixed)."""
    prediction: Literal["eps", "v", "x0"] = "eps"
    """vdm: what the network outputs, converted to eps by the process."""
    class_conditional: bool = False
    """Train on the dataset's labels, for class-conditional sampling and classifier-free guidance."""
    label_dropout: float = _field(0.1, ge=0.0, lt=1.0)
    """Rate at which a conditional model's label is replaced by the null label in training (guidance needs > 0)."""

    def __post_init__(self) -> None:
        if self.family != "vdm" and self.schedule == "linear" and self.timesteps < LINEAR_MIN_TIMESTEPS:
            raise ConfigError(
                f"the linear schedule needs timesteps >= {LINEAR_MIN_TIMESTEPS} (its betas, 1e-4 to 0.02 at T = 1000, "
                f"scale with 1000 / T and must stay below 1); got {self.timesteps}, or use schedule: cosine"
            )
        allowed = {"ddpm": ({"fixed_small", "fixed_large"}, {"simple"}), "vlb": ({"learned_range"}, {"hybrid", "vlb"}),
                   "vdm": ({None}, {None})}[self.family]
        if self.variance is not None and self.variance not in allowed[0] or self.family == "vdm" and self.variance:
            raise ConfigError(f"variance '{self.variance}' does not apply to family '{self.family}' "
                              f"(allowed: {', '.join(str(a) for a in sorted(allowed[0], key=str))})")
        if self.loss is not None and self.loss not in allowed[1] or self.family == "vdm" and self.loss:
            raise ConfigError(f"loss '{self.loss}' does not apply to family '{self.family}' "
                              f"(allowed: {', '.join(str(a) for a in sorted(allowed[1], key=str))})")
        if self.importance_sampling and self.loss_type != "vlb":
            raise ConfigError("importance_sampling draws t for the pure bound: it needs family 'vlb' with loss 'vlb'")
        if not self.gamma_min < self.gamma_max:
            raise ConfigError(f"gamma_min ({self.gamma_min}) must be below gamma_max ({self.gamma_max})")
        if self.family != "vdm":
            for key, default in (("weighting", "elbo"), ("noise_sampling", "schedule"), ("prediction", "eps")):
                if getattr(self, key) != default:
                    raise ConfigError(f"{key} '{getattr(self, key)}' applies to family 'vdm' only; remove it from "
                                      f"this '{self.family}' block")
        elif self.gamma != "fixed" and (self.weighting != "elbo" or self.noise_sampling == "adaptive"):
            what = (f"weighting '{self.weighting}' trains on a weighted loss, which must not move the schedule's "
                    "end points" if self.weighting != "elbo" else "noise_sampling 'adaptive' draws the log-SNR itself")
            raise ConfigError(f"{what}: set gamma: fixed (the log-SNR then spans -gamma_max to -gamma_min), "
                              f"not gamma: {self.gamma}")

    @property
    def reverse_variance(self) -> str | None:
        return self.variance or FAMILY_DEFAULTS[self.family][0]

    @property
    def loss_type(self) -> str | None:
        return self.loss or FAMILY_DEFAULTS[self.family][1]

    @property
    def discrete(self) -> bool:
        return self.family != "vdm"


@dataclass(frozen=True)
class TrainConfig:
    lr: float = _field(2e-4, gt=0, lt=1)
    warmup_steps: int = _field(0, ge=0)
    grad_clip: float = _field(1.0, ge=0)
    ema_decay: float = _field(0.999, ge=0, lt=1)
    ema_warmup: bool = True
    """EMA decay min(ema_decay, (1 + n) / (10 + n)) over the first updates."""
    seed: int = _field(0, ge=0)
    log_every: int = _field(50, ge=1)
    checkpoint_every: int = _field(500, ge=1)
    """Steps between resumable checkpoints (outputs/train/<dataset>-<model>/resume.pt)."""
    skip_nonfinite: bool = False
    """Skip a batch whose loss or gradient is not finite (counted in MLflow) instead of stopping."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc_per_node: int = _field(1, ge=1, le=1024)
    """Data-parallel processes the train stage starts on this machine (torchrun); the global batch stays
    datasets.<name>.batch_size."""
    bf16: bool = True
    """bf16 autocast on CUDA; CPU always trains in fp32."""
    compile: bool = False
    """torch.compile the network."""
    channels_last: bool = True
    """channels-last memory format on CUDA."""


SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"]
MULTISTEP_SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde")
"""Samplers that carry the previous step's prediction: they choose their own steps and run forward only."""


@dataclass(frozen=True)
class SampleConfig:
    sampler: SamplerName = "ddim"
    """ddpm: ancestral (respaced on fewer than T steps); ddim: DDIM with eta; dpmpp_2m: DPM-Solver++(2M),
    deterministic, for 10-25 steps; dpmpp_2m_sde: its stochastic form (SDE-DPM-Solver++(2M))."""
    steps: int | None = _field(None, ge=1)
    """Number of reverse steps; ``null`` means every step of the model (T)."""
    eta: float = _field(0.0, ge=0)
    clip_denoised: bool = True
    num_samples: int = _field(1000, ge=1)
    """Generated images per draw, the count every score is computed at."""
    draws: int = _field(3, ge=2, le=100)
    """Independent draws of ``num_samples`` images each: every score is their mean, with their standard
    deviation (at least two, or a score has no spread)."""
    batch_size: int = _field(500, ge=1)
    grid_size: int = _field(64, ge=1)
    strip_samples: int = _field(8, ge=1)
    strip_frames: int = _field(10, ge=2)
    seed: int = _field(1, ge=0)
    sweep_steps: tuple[int, ...] = ()
    """Further step counts whose samples are scored too (FID against steps)."""
    step_list: tuple[int, ...] = ()
    """Explicit model steps (0..T-1) for the ``ddpm`` and ``ddim`` samplers of discrete-time models, instead of
    ``steps`` evenly spaced ones."""
    guidance: float = _field(1.0, ge=0)
    """Classifier-free guidance scale w of class-conditional models: 0 unconditional, 1 conditional, > 1 guided."""
    classes: tuple[int, ...] = ()
    """Classes a class-conditional model is asked for, repeated in order; empty: every class in turn."""
    guidance_sweep: tuple[float, ...] = ()
    """Further guidance scales whose samples are scored too (class accuracy, FID and IS against w)."""
    repaint_resample: int = _field(5, ge=1, le=100)
    """RePaint resamplings per step in the inpainting figure (1: plain replacement)."""

    def __post_init__(self) -> None:
        if self.step_list:
            if self.sampler in MULTISTEP_SAMPLERS:
                raise ConfigError("sample.step_list applies to the ddpm and ddim samplers; DPM-Solver++ chooses its "
                                  "own uniform-logSNR steps from sample.steps: empty sample.step_list")
            if len(set(self.step_list)) != len(self.step_list) or min(self.step_list) < 0:
                raise ConfigError(f"sample.step_list must hold distinct steps >= 0, got {list(self.step_list)}")
        if any(w < 0 for w in self.guidance_sweep) or len(set(self.guidance_sweep)) != len(self.guidance_sweep):
            raise ConfigError(f"sample.guidance_sweep must hold distinct scales >= 0, got {list(self.guidance_sweep)}")
        bad = [n for n in self.sweep_steps if n < 1]
        if bad:
            raise ConfigError(f"sample.sweep_steps must hold step counts >= 1, got {list(self.sweep_steps)}")
        if len(set(self.sweep_steps)) != len(self.sweep_steps):
            raise ConfigError(f"sample.sweep_steps lists a step count twice: {list(self.sweep_steps)}")


@dataclass(frozen=True)
class ClassifierConfig:
    """One feature network trained on a dataset: ``classifier`` (plain conv net, BatchNorm, max-pooling,
    shift augmentation) or ``resnet`` (residual blocks, GroupNorm, strided convolutions, affine
    augmentation, label smoothing); they share no weights and no layer design."""

    steps: int = _field(1500, ge=1)
    batch_size: int = _field(128, ge=1)
    lr: float = _field(1e-3, gt=0, lt=1)
    width: int = _field(32, ge=4, le=512)
    feature_dim: int = _field(64, ge=2, le=4096)
    seed: int = _field(0, ge=0)


@dataclass(frozen=True)
class EvaluateConfig:
    features: tuple[FeatureBackend, ...] = ("classifier", "resnet")
    """Feature backends, each scored separately: ``classifier`` and ``resnet`` (two networks of different
    design trained on the dataset, offline) and ``inception`` (torch-fidelity's InceptionV3, the features
    papers report)."""
    significance: float = _field(0.05, gt=0, lt=1)
    """Level of Welch's t-test over the draws that decides whether two scores differ beyond the noise."""
    inf_sizes: int = _field(8, ge=3, le=50)
    """Subset sizes (from half a draw to all of it) of the FID_inf and IS_inf fits."""
    fid: bool = True
    isc: bool = True
    kid: bool = True
    prc: bool = True
    """Precision and recall (Kynkaanniemi et al. 2019)."""
    kid_subsets: int = _field(100, ge=1)
    kid_subset_size: int = _field(1000, ge=2)
    """Capped at the smaller of the two image counts; the value used is recorded with KID."""
    prc_neighborhood: int = _field(3, ge=1)
    reference_images: int = _field(0, ge=0)
    """Training images that make the reference statistics; 0 means the whole training split."""
    inception_weights: str = "data/weights/weights-inception-2015-12-05-6726825d.pth"
    """Where torch-fidelity's InceptionV3 weights are read from (downloaded there when missing)."""
    min_classifier_accuracy: float = _field(0.95, ge=0, le=1)
    nll_images: int = _field(100, ge=0)
    """Held-out images for the bits/dim bound; 0 means the whole split."""
    nll_t_draws: int = _field(4, ge=1)
    """Draws of t per image for the unbiased estimate of the sum over t."""
    isc_splits: int = _field(10, ge=1)
    batch_size: int = _field(500, ge=1)
    seed: int = _field(0, ge=0)

    def __post_init__(self) -> None:
        if not self.features:
            raise ConfigError("evaluate.features is empty; list at least one of: classifier, resnet, inception")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"evaluate.features lists a backend twice: {list(self.features)}")
        if not (self.fid or self.isc or self.kid or self.prc):
            raise ConfigError("evaluate.fid, isc, kid and prc are all false; enable at least one metric")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "diffusionlab"
    tracking_uri: str = "sqlite:///mlflow.db"
    """``MLFLOW_TRACKING_URI`` in the environment overrides it; a relative sqlite path is taken from the
    project root (``DVC_ROOT``), also in the temporary workspaces of ``dvc queue``."""
    artifact_location: str | None = None
    """Where a new experiment keeps its artifacts (``MLFLOW_ARTIFACT_LOCATION`` overrides); None: ``mlruns/``
    at the project root for a local store, the server's choice for a tracking server."""
    required: bool = True
    """False: when the tracking store cannot be reached, train and write the DVC outputs anyway, with a warning."""
    connect_timeout: float = _field(10.0, gt=0)
    """Seconds to wait for a tracking server before a stage gives up (or goes on untracked)."""
    system_metrics: bool = True
    """Log CPU, memory, disk, network and GPU use while training (``system/...`` metrics)."""
    system_metrics_interval: float = _field(10.0, gt=0)
    """Seconds between two system metrics samples."""
    register_best: bool = True
    """Register every evaluated model in ``<experiment>-<dataset>`` and point alias ``best`` at the lowest FID."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one (dataset, model) combination reads: saved in its checkpoint and logged to MLflow."""

    dataset: DatasetName
    model_name: str
    data: DatasetConfig
    model: ModelConfig
    train: TrainConfig
    sample: SampleConfig
    evaluate: EvaluateConfig

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model_name}"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return _build(cls, raw, "")


@dataclass(frozen=True)
class Params:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    datasets: dict[DatasetName, DatasetConfig] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    resnet: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(steps=600, width=16, feature_dim=128, seed=1))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        for name in self.pipeline.datasets:
            if name not in self.datasets:
                raise ConfigError(f"pipeline.datasets lists '{name}' but params.yaml has no datasets.{name} block")
        for name in self.pipeline.models:
            if name not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ConfigError(
                    f"pipeline.models lists '{name}' but params.yaml has no models.{name} block (defined: {known})"
                )
        for name in self.pipeline.datasets:
            data = self.datasets[name]
            if data.batch_size % self.train.nproc_per_node:
                raise ConfigError(
                    f"datasets.{name}.batch_size {data.batch_size} does not divide among train.nproc_per_node = "
                    f"{self.train.nproc_per_node} processes; the batch size is global: make it a multiple of "
                    f"{self.train.nproc_per_node}"
                )
        self._check_classes()
        for name, model in self.models.items():
            if not model.discrete:
                if self.sample.step_list and name in self.pipeline.models:
                    raise ConfigError(f"sample.step_list names discrete steps, but models.{name} is a continuous-time "
                                      "model (vdm); use sample.steps, or run it without sample.step_list")
                continue
            late = [t for t in self.sample.step_list if t >= model.timesteps]
            if late:
                raise ConfigError(f"sample.step_list holds {late} but models.{name} has steps 0..{model.timesteps - 1}")
            steps = self.sample.steps
            if steps is not None and steps > model.timesteps:
                raise ConfigError(
                    f"sample.steps is {steps} but models.{name}.timesteps is {model.timesteps}; "
                    "a sampler cannot take more steps than the model has"
                )
            too_many = [n for n in self.sample.sweep_steps if n > model.timesteps]
            if too_many:
                raise ConfigError(
                    f"sample.sweep_steps holds {too_many} but models.{name}.timesteps is {model.timesteps}; "
                    "a sampler cannot take more steps than the model has"
                )

    def _check_classes(self) -> None:
        """Requested classes need class-conditional models and must exist in every dataset."""
        if not self.sample.classes:
            return
        unconditional = [m for m in self.pipeline.models if not self.models[m].class_conditional]
        if unconditional:
            raise ConfigError(
                f"sample.classes asks for classes {list(self.sample.classes)}, but models.{unconditional[0]} is "
                "unconditional: set class_conditional: true in its block (and retrain), or empty sample.classes"
            )
        for name in self.pipeline.datasets:
            bad = [c for c in self.sample.classes if not 0 <= c < NUM_CLASSES[name]]
            if bad:
                raise ConfigError(f"sample.classes holds {bad}, but {name} has classes 0..{NUM_CLASSES[name] - 1}")

    def feature_network(self, name: str) -> ClassifierConfig:
        """The params block of feature network ``name`` (``classifier`` or ``resnet``)."""
        return {"classifier": self.classifier, "resnet": self.resnet}[name]

    def run(self, dataset: str, model: str) -> RunConfig:
        """The resolved configuration of one (dataset, model) combination."""
        if dataset not in self.datasets:
            raise ConfigError(f"unknown dataset '{dataset}': params.yaml defines {sorted(self.datasets)}")
        if model not in self.models:
            raise ConfigError(f"unknown model '{model}': params.yaml defines {sorted(self.models)}")
        return RunConfig(
            dataset=dataset,  # type: ignore[arg-type]
            model_name=model,
            data=self.datasets[dataset],  # type: ignore[index]
            model=self.models[model],
            train=self.train,
            sample=self.sample,
            evaluate=self.evaluate,
        )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate ``params.yaml``; raises :class:`ConfigError` naming the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run the stages from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    return parse_params(raw)


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """One line naming the file, the line and column (1-based) and what the YAML parser expected."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} started at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    return f"{path} is not valid YAML{where}: {problem}; fix it there and run the stage again"


def parse_params(raw: dict[str, Any]) -> Params:
    return _build(Params, raw, "")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _key(prefix, f.name)
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], key))
    return keys


def _unknown_key_error(cls: type, key: str, prefix: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    elsewhere = [k for k in _all_keys(Params) if k.rsplit(".", 1)[-1] == leaf]
    near = elsewhere[:1] or difflib.get_close_matches(key, _all_keys(cls, prefix), n=1, cutoff=0.6)
    near = near or difflib.get_close_matches(key, _all_keys(Params), n=1, cutoff=0.6)
    if near:
        hint = f"; did you mean {near[0]}?"
    else:
        hint = f"; valid keys here: {', '.join(f.name for f in dataclasses.fields(cls))}"
    return ConfigError(f"unknown key {key} in params.yaml{hint}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown_key_error(cls, _key(prefix, str(key)), prefix)
    values = {}
    for f in dataclasses.fields(cls):
        key = _key(prefix, f.name)
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key} in params.yaml")
            continue
        values[f.name] = _convert(hints[f.name], raw[f.name], key)
        _check_range(f, values[f.name], key)
    try:
        return cls(**values)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}: {err}") from None
        raise


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    bounds = f.metadata
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if bounds.get("ge") is not None and not item >= bounds["ge"]:
            raise ConfigError(f"{key} must be >= {bounds['ge']}, got {item}")
        if bounds.get("gt") is not None and not item > bounds["gt"]:
            raise ConfigError(f"{key} must be > {bounds['gt']}, got {item}")
        if bounds.get("le") is not None and not item <= bounds["le"]:
            raise ConfigError(f"{key} must be <= {bounds['le']}, got {item}")
        if bounds.get("lt") is not None and not item < bounds["lt"]:
            raise ConfigError(f"{key} must be < {bounds['lt']}, got {item}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key)
        raise ConfigError(f"{key}: unsupported type {tp}")
    if value is None:
        raise ConfigError(f"{key} must not be null")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item_tp = get_args(tp)[0]
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        if get_origin(key_tp) is Literal:
            for name in value:
                if name not in get_args(key_tp):
                    near = difflib.get_close_matches(str(name), get_args(key_tp), n=1)
                    hint = f"; did you mean {key}.{near[0]}?" if near else ""
                    choices = ", ".join(get_args(key_tp))
                    raise ConfigError(f"unknown key {key}.{name} in params.yaml (supported: {choices}){hint}")
        return {str(k): _convert(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept any number written that way.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")
