"""Typed, validated configuration loaded from ``params.yaml``.

Every section maps onto a frozen pydantic model that checks each key's type and range and rejects unknown
keys; :class:`Params` checks the sections against each other. A failure is one :class:`ConfigError` line
naming the key, so that a stage stops before any work starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from .errors import ConfigError
from .families import FAMILIES, ModelParams
from .families.base import Float, Section
from .sampler_names import MULTISTEP_SAMPLERS, ONE_STEP_SAMPLERS, SamplerName  # noqa: F401 (re-exported)

DatasetName = Literal["digits", "mnist", "cifar10"]
FeatureBackend = Literal["classifier", "resnet", "inception"]
FeatureNetwork = Literal["classifier", "resnet"]
"""The feature networks trained on each dataset (offline backends); each has its block in params.yaml."""
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}
ModelConfig = ModelParams
T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)
Tuple = Annotated[tuple[T, ...], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
"""A YAML list, kept as a tuple (strict validation takes no list for a bare tuple)."""
Count = Annotated[int, Field(ge=1)]


class PipelineConfig(Section):
    datasets: Tuple[DatasetName] = ("digits",)
    models: Tuple[str] = ("ddpm",)


class DataConfig(Section):
    mirror: str | None = None
    """Folder or URL holding the original archive files; ``DIFFUSIONLAB_DATA_MIRROR`` overrides it."""
    download_timeout: Float = Field(10.0, gt=0)
    digits_test_size: int = Field(297, ge=10, le=897)
    split_seed: int = Field(0, ge=0)


class UNetConfig(Section):
    base_channels: int = Field(64, ge=8, le=1024)
    channel_mult: Tuple[Annotated[int, Field(ge=1, le=16)]] = (1, 2, 2)
    num_res_blocks: int = Field(2, ge=1, le=8)
    attention_resolutions: Tuple[Count] = (16,)
    num_heads: int = Field(1, ge=1, le=32)
    dropout: Float = Field(0.1, ge=0.0, lt=1.0)


class DatasetConfig(Section):
    image_size: int = Field(ge=4, le=512)
    train_steps: Count
    batch_size: Count
    unet: UNetConfig = UNetConfig()
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
        return self


class TrainConfig(Section):
    lr: Float = Field(2e-4, gt=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: Float = Field(1.0, ge=0)
    ema_decay: Float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True
    """EMA decay min(ema_decay, (1 + n) / (10 + n)) over the first updates."""
    seed: int = Field(0, ge=0)
    log_every: Count = 50
    checkpoint_every: Count = 500
    """Steps between resumable checkpoints (outputs/train/<dataset>-<model>/resume.pt)."""
    skip_nonfinite: bool = False
    """Skip a batch whose loss or gradient is not finite (counted in MLflow) instead of stopping."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc_per_node: int = Field(1, ge=1, le=1024)
    """Data-parallel processes (torchrun) on this machine; the global batch stays datasets.<name>.batch_size."""
    bf16: bool = True
    """bf16 autocast on CUDA; CPU always trains in fp32."""
    compile: bool = False
    """torch.compile the network."""
    channels_last: bool = True
    """channels-last memory format on CUDA."""


def _distinct(key: str, values: tuple, what: str) -> None:
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        raise ValueError(f"{key} lists {what} twice ({twice[0]!r}); it must hold distinct {what.split(' ', 1)[1]}s")


class SampleConfig(Section):
    sampler: SamplerName = "ddim"
    """ddpm: ancestral (respaced below T steps); ddim: DDIM with eta; dpmpp_2m: DPM-Solver++(2M), for 10-25
    steps, and dpmpp_2m_sde its stochastic form; euler and heun solve the probability-flow ODE, for every
    family, in the EDM formulation of Karras et al. 2022 for the diffusion families (heun: second order,
    2N - 1 network evaluations for N steps)."""
    sampler_for: dict[str, SamplerName] = Field(default_factory=dict)
    """The sampler of these models instead of ``sampler`` (``{flow: euler}``: a flow beside ancestral DDPM)."""
    steps: Count | None = None
    """Number of reverse steps; ``null`` means every step of the model (T)."""
    eta: Float = Field(0.0, ge=0)
    shift: Float = Field(1.0, gt=0)
    """Time shift s of Esser et al. 2024 (SD3) for euler and heun: t' = s t / (1 + (s - 1) t); s > 1 spends
    more steps at high noise."""
    clip_denoised: bool = True
    num_samples: Count = 1000
    """Generated images per draw, the count every score is computed at."""
    draws: int = Field(3, ge=2, le=100)
    """Independent draws of ``num_samples`` images: every score is their mean, with their standard deviation."""
    batch_size: Count = 500
    grid_size: Count = 64
    strip_samples: Count = 8
    strip_frames: int = Field(10, ge=2)
    seed: int = Field(1, ge=0)
    sweep_steps: Tuple[Count] = ()
    """Further step counts whose samples are scored too (FID against steps)."""
    step_list: Tuple[Annotated[int, Field(ge=0)]] = ()
    """Explicit model steps (0..T-1) for the ``ddpm`` and ``ddim`` samplers of discrete-time models."""
    guidance: Float = Field(1.0, ge=0)
    """Classifier-free guidance scale w of class-conditional models: 0 unconditional, 1 conditional, > 1 guided."""
    classes: Tuple[int] = ()
    """Classes a class-conditional model is asked for, repeated in order; empty: every class in turn."""
    guidance_sweep: Tuple[Annotated[Float, Field(ge=0)]] = ()
    """Further guidance scales whose samples are scored too (class accuracy, FID and IS against w)."""
    repaint_resample: int = Field(5, ge=1, le=100)
    """RePaint resamplings per step in the inpainting figure (1: plain replacement)."""

    @model_validator(mode="after")
    def _lists_fit(self) -> SampleConfig:
        if self.step_list and self.sampler not in ("ddpm", "ddim"):
            how = ("DPM-Solver++ chooses its own uniform-logSNR steps from sample.steps"
                   if self.sampler in MULTISTEP_SAMPLERS else f"{self.sampler} spaces sample.steps by sample.shift")
            raise ValueError(f"sample.step_list applies to the ddpm and ddim samplers; {how}: empty sample.step_list")
        _distinct("sample.step_list", self.step_list, "a step")
        _distinct("sample.sweep_steps", self.sweep_steps, "a step count")
        _distinct("sample.guidance_sweep", self.guidance_sweep, "a scale")
        return self


class ClassifierConfig(Section):
    """A feature network trained on a dataset: ``classifier`` (conv net, BatchNorm, max-pooling, shifts) or
    ``resnet`` (residual blocks, GroupNorm, affine warps, label smoothing); they share no layer design."""

    steps: Count = 1500
    batch_size: Count = 128
    lr: Float = Field(1e-3, gt=0, lt=1)
    width: int = Field(32, ge=4, le=512)
    feature_dim: int = Field(64, ge=2, le=4096)
    seed: int = Field(0, ge=0)


class EvaluateConfig(Section):
    features: Tuple[FeatureBackend] = ("classifier", "resnet")
    """Backends, each scored separately: ``classifier`` and ``resnet`` (trained on the dataset, offline) and
    ``inception`` (torch-fidelity's InceptionV3, the features papers report)."""
    significance: Float = Field(0.05, gt=0, lt=1)
    """Level of Welch's t-test over the draws that decides whether two scores differ beyond the noise."""
    inf_sizes: int = Field(8, ge=3, le=50)
    """Subset sizes (from half a draw to all of it) of the FID_inf and IS_inf fits."""
    fid: bool = True
    isc: bool = True
    kid: bool = True
    prc: bool = True
    """Precision and recall (Kynkaanniemi et al. 2019)."""
    kid_subsets: Count = 100
    kid_subset_size: int = Field(1000, ge=2)
    """Capped at the smaller of the two image counts; the value used is recorded with KID."""
    prc_neighborhood: Count = 3
    reference_images: int = Field(0, ge=0)
    """Training images that make the reference statistics; 0 means the whole training split."""
    inception_weights: str = "data/weights/weights-inception-2015-12-05-6726825d.pth"
    """Where torch-fidelity's InceptionV3 weights are read from (downloaded there when missing)."""
    min_classifier_accuracy: Float = Field(0.95, ge=0, le=1)
    nll_images: int = Field(100, ge=0)
    """Held-out images for the bits/dim bound; 0 means the whole split."""
    nll_t_draws: Count = 4
    """Draws of t per image for the unbiased estimate of the sum over t."""
    ode_images: int = Field(100, ge=0)
    """Held-out images for bits/dim through the probability-flow ODE (every family); 0 skips it."""
    ode_steps: int = Field(96, ge=2, le=10_000)
    """Heun steps of the ODE likelihood's integral (2 steps - 1 network evaluations with a backward pass each)."""
    ode_probes: int = Field(1, ge=1, le=64)
    """Hutchinson probes per step for the divergence."""
    isc_splits: Count = 10
    batch_size: Count = 500
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _something_to_score(self) -> EvaluateConfig:
        if not self.features:
            raise ValueError("evaluate.features is empty; list at least one of: classifier, resnet, inception")
        _distinct("evaluate.features", self.features, "a backend")
        if not (self.fid or self.isc or self.kid or self.prc):
            raise ValueError("evaluate.fid, isc, kid and prc are all false; enable at least one metric")
        return self


class MlflowConfig(Section):
    experiment: str = "diffusionlab"
    tracking_uri: str = "sqlite:///mlflow.db"
    """``MLFLOW_TRACKING_URI`` overrides it; a relative sqlite path is from the project root (``DVC_ROOT``)."""
    artifact_location: str | None = None
    """Artifacts of a new experiment (``MLFLOW_ARTIFACT_LOCATION`` overrides); None: ``mlruns/`` at the
    project root for a local store, the server's choice for a tracking server."""
    required: bool = True
    """False: when the tracking store cannot be reached, train and write the DVC outputs anyway, with a warning."""
    connect_timeout: Float = Field(10.0, gt=0)
    """Seconds to wait for a tracking server before a stage gives up (or goes on untracked)."""
    system_metrics: bool = True
    """Log CPU, memory, disk, network and GPU use while training (``system/...`` metrics)."""
    system_metrics_interval: Float = Field(10.0, gt=0)
    """Seconds between two system metrics samples."""
    register_best: bool = True
    """Register every evaluated model in ``<experiment>-<dataset>`` and point alias ``best`` at the lowest FID."""


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

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model_name}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        model = raw.get("model") if isinstance(raw, dict) else None
        if isinstance(model, dict) and model.get("family") in FAMILIES:
            own = FAMILIES[model["family"]].params.model_fields
            raw = {**raw, "model": {k: v for k, v in model.items() if v is not None and (
                k in own or _OLD_MODEL_DEFAULTS.get(k, ...) != v)}}
        return _validate(cls, raw)


class Params(Section):
    pipeline: PipelineConfig = PipelineConfig()
    data: DataConfig = DataConfig()
    datasets: dict[DatasetName, DatasetConfig] = Field(default_factory=dict)
    models: dict[str, ModelParams] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    resnet: ClassifierConfig = ClassifierConfig(steps=600, width=16, feature_dim=128, seed=1)
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        s, nproc = self.sample, self.train.nproc_per_node
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
        for name in [n for n in s.sampler_for if n not in self.models][:1]:
            raise ValueError(f"sample.sampler_for names '{name}' but params.yaml has no models.{name} block "
                             f"(defined: {', '.join(sorted(self.models)) or 'none'})")
        for name in self.pipeline.models:
            model, kind = self.models[name], type(self.models[name])
            key, sampler = (f"sample.sampler_for.{name}", s.sampler_for[name]) if name in s.sampler_for else \
                ("sample.sampler", s.sampler)
            if sampler not in kind.SAMPLERS:
                raise ValueError(f"{key} '{sampler}' cannot draw from models.{name} (family '{model.family}'); its "
                                 f"samplers: {', '.join(kind.SAMPLERS)} (set one in sample.sampler_for.{name})")
            if s.step_list and sampler not in ("ddpm", "ddim"):
                raise ValueError(f"sample.step_list applies to the ddpm and ddim samplers, but {key} is "
                                 f"'{sampler}': empty sample.step_list")
            if s.classes and not model.class_conditional:
                raise ValueError(f"sample.classes asks for classes {list(s.classes)}, but models.{name} is "
                                 "unconditional: set class_conditional: true in its block (and retrain), or empty "
                                 "sample.classes")
            if s.step_list and not model.discrete:
                raise ValueError(f"sample.step_list names discrete steps, but models.{name} is a continuous-time "
                                 f"model (family '{model.family}'); use sample.steps, or empty sample.step_list")
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
        return self

    def feature_network(self, name: str) -> ClassifierConfig:
        """The params block of feature network ``name`` (``classifier`` or ``resnet``)."""
        return {"classifier": self.classifier, "resnet": self.resnet}[name]

    def run(self, dataset: str, model: str) -> RunConfig:
        """The resolved configuration of one (dataset, model) combination."""
        if dataset not in self.datasets:
            raise ConfigError(f"unknown dataset '{dataset}': params.yaml defines {sorted(self.datasets)}")
        if model not in self.models:
            raise ConfigError(f"unknown model '{model}': params.yaml defines {sorted(self.models)}")
        sample = self.sample if model not in self.sample.sampler_for else \
            replace(self.sample, sampler=self.sample.sampler_for[model])
        return RunConfig(dataset=dataset, model_name=model, data=self.datasets[dataset], model=self.models[model],
                         train=self.train, sample=sample, evaluate=self.evaluate)


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
    return _validate(Params, raw)


def replace(section: S, **changes: Any) -> S:
    """A copy of ``section`` with ``changes``, validated as params.yaml is (``model_copy`` checks nothing)."""
    return _validate(type(section), {**section.model_dump(), **changes})


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _validate(cls: type[S], raw: Any) -> S:
    # Strict: YAML's true is no number and 1.5 no integer; Float and Tuple take what YAML writes instead.
    try:
        return cls.model_validate(raw, strict=True)
    except ValidationError as err:
        raise ConfigError(_message(cls, err.errors()[0])) from None


_MAPPING = "must be a mapping of keys to values"
_SAYS = {"int_type": "must be an integer", "float_type": "must be a number", "finite_number": "must be a finite number",
         "bool_type": "must be true or false", "string_type": "must be a string", "tuple_type": "must be a list",
         "model_type": _MAPPING, "model_attributes_type": _MAPPING, "dict_type": _MAPPING, "greater_than": "must be >",
         "greater_than_equal": "must be >=", "less_than": "must be <", "less_than_equal": "must be <="}
_LIMITS = ("gt", "ge", "lt", "le")
_FAMILY_OF = {family.params: name for name, family in FAMILIES.items()}


def _message(root: type[BaseModel], error: Any) -> str:
    """One line naming the key of a pydantic error by its dotted path in params.yaml."""
    loc, kind, value, ctx = error["loc"], error["type"], error["input"], error.get("ctx", {})
    (key, _), (parent, section) = _locate(root, loc), _locate(root, loc[:-1])
    family, leaf, expected = _FAMILY_OF.get(section), str(loc[-1]) if loc else "", ctx.get("expected", "")
    owners = _families_with(leaf, value if kind == "literal_error" else ...) if family else []
    if kind == "value_error":
        return str(ctx["error"]) if str(ctx["error"]).startswith(key) else f"{key}: {ctx['error']}"
    if kind == "extra_forbidden" and len(owners) == 1:
        return f"{parent}: {leaf} {value!r} applies to family '{owners[0]}' only; remove it from this '{family}' block"
    if kind in ("extra_forbidden", "literal_error") and owners:
        allowed = f"allowed: {expected.replace(' or ', ', ')}" if expected else f"families with it: {', '.join(owners)}"
        return f"{parent}: {leaf} {value!r} does not apply to family '{family}' ({allowed})"
    if kind == "extra_forbidden" or leaf == "[key]":
        return f"unknown key {key} in params.yaml; {_hint(root, loc)}"
    if kind.startswith("union_tag"):
        choices = ", ".join(map(repr, FAMILIES))
        return f"{key}.family must be one of {choices}, got {value['family']!r}" if kind == "union_tag_invalid" \
            else f"missing key {key}.family in params.yaml (one of {choices})"
    if kind == "missing" or value is None:
        return f"missing key {key} in params.yaml" if kind == "missing" else f"{key} must not be null"
    if kind == "literal_error":
        return f"{key} must be one of {expected.replace(' or ', ', ')}, got {value!r}"
    limit = "".join(f" {v:g}" if isinstance(v, float) else f" {v}" for k, v in ctx.items() if k in _LIMITS)
    return f"{key or 'params.yaml'} {_SAYS[kind]}{limit}, got {value!r}" if kind in _SAYS else \
        f"{key or 'params.yaml'}: {error['msg']}"


def _families_with(key: str, value: Any = ...) -> list[str]:
    """The families whose params have ``key`` (taking ``value`` for it, when given)."""
    return [name for name, family in FAMILIES.items() if key in family.params.model_fields and (
        value is ... or value in get_args(family.params.model_fields[key].annotation))]


def _locate(root: Any, loc: tuple) -> tuple[str, Any]:
    """The dotted key of an error location, without the family tags pydantic adds, and the type held there."""
    key, tp = "", root
    for part in (p for p in loc if p != "[key]"):
        if get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif part in FAMILIES:  # the tag of the models.<name> union
            tp = FAMILIES[part].params
            continue
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}" if key else part
    return key, tp


def _keys(tp: Any, prefix: str = "") -> list[str]:
    """Every key under a section (or a mapping with Literal keys, such as ``datasets``)."""
    if get_origin(tp) is dict:
        return [f"{prefix}{name}" for name in get_args(get_args(tp)[0])]
    fields = tp.model_fields.items() if isinstance(tp, type) and issubclass(tp, BaseModel) else ()
    return [k for name, f in fields for k in (f"{prefix}{name}", *_keys(f.annotation, f"{prefix}{name}."))]


def _hint(root: type[BaseModel], loc: tuple) -> str:
    """Did you mean: the key of that name in another section, else the nearest key here or anywhere."""
    key, (parent, tp) = _locate(root, loc)[0], _locate(root, loc[:-2] if loc[-1] == "[key]" else loc[:-1])
    prefix = f"{parent}." if parent else ""
    here = _keys(tp, prefix)
    near = [k for k in _keys(Params) if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    near = near or difflib.get_close_matches(key, here, n=1) or difflib.get_close_matches(key, _keys(Params), n=1)
    names = [k[len(prefix):] for k in here if "." not in k[len(prefix):]]
    return f"did you mean {near[0]}?" if near else f"valid keys here: {', '.join(names)}"
