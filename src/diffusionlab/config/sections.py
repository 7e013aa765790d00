"""The params sections that concern no model family and no sampler: what the pipeline runs, training, the sample
counts, evaluation and tracking. Torch-free, free of the families and of the sampler names, so that a stage
reading only these sections (the feature networks, the reference statistics) depends on this module alone: a new
sampler re-runs neither. The sections that name samplers are :mod:`diffusionlab.config.sampling`; the full
params, with the model blocks, :mod:`diffusionlab.config.params`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..datasets import DatasetName
from ..validation import Count, Float, Section, Tuple, deep_merge, distinct

FeatureBackend = Literal["classifier", "resnet", "inception"]
FeatureNetwork = Literal["classifier", "resnet"]
"""The feature networks trained on each dataset (offline backends); each has its block in params.yaml."""
DeviceChoice = Literal["auto", "cpu", "cuda"]
Bf16Choice = bool | Literal["auto"]
"""bf16 autocast: ``auto`` where the device computes in bf16 natively (a CUDA device; a CPU with AVX-512 BF16 or
AMX), ``true`` everywhere (a CPU without them emulates it, slower than fp32), ``false`` nowhere."""
Protocol = Literal["draws", "paper"]


DEFAULT_BUDGET = "default"
"""The budget of a dataset block as written; any other is one of its ``budgets`` blocks applied over it
(:func:`diffusionlab.config.params.apply_budgets`)."""


class PipelineConfig(Section):
    datasets: Tuple[DatasetName] = ("digits",)
    models: Tuple[str] = ("ddpm", "vlb", "vdm")


class TrainConfig(Section):
    lr: Float = Field(4e-4, gt=0, lt=1)
    warmup_steps: int = Field(100, ge=0)
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
    device: DeviceChoice = "auto"
    nproc_per_node: int = Field(1, ge=1, le=1024)
    """Data-parallel processes (torchrun) on this machine; the global batch stays datasets.<name>.batch_size."""
    bf16: Bf16Choice = "auto"
    """bf16 autocast of the forward pass (:data:`Bf16Choice`); the loss, the gradients, the optimizer and the
    EMAs stay fp32. The run records what it used (tag ``train_precision``)."""
    compile: bool = False
    """torch.compile the network."""
    channels_last: bool | Literal["auto"] = "auto"
    """The network's weights in channels-last memory format: ``auto`` on CUDA, ``true`` everywhere, ``false``
    nowhere (on the CPUs measured it is slower under bf16 autocast: docs/benchmarks.md)."""
    phema_widths: Tuple[Annotated[Float, Field(gt=0, lt=0.28)]] = ()
    """Post-hoc EMA (Karras et al. 2024): the relative widths sigma_rel of the two (or more) power-function EMAs
    tracked as training goes, saved every ``phema_every`` steps in the train stage's ``phema/`` folder, from which
    ``python -m diffusionlab.phema`` rebuilds the EMA of any width; empty: none."""
    phema_every: Count = 100
    """Steps between post-hoc EMA snapshots (and the last step)."""


class SampleCounts(BaseModel):
    """The counts of the ``sample`` section that every score is computed at: what a stage that scores but does not
    sample reads of it (its other keys are the sample stage's, :class:`diffusionlab.config.sampling.SampleConfig`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    num_samples: Count = 300
    """Generated images per draw, the count every score is computed at."""
    draws: int = Field(3, ge=1, le=100)
    """Independent draws of ``num_samples`` images: every score is their mean, with their standard deviation.
    One draw only under ``evaluate.protocol: paper``."""


PAPER_PROTOCOL = {
    "sample": {"draws": 1, "sweep_steps": [], "guidance_sweep": []},
    "evaluate": {"features": ["inception"], "reference_images": 0, "isc_splits": 10, "fid": True, "isc": True,
                 "kid": False, "prc": False},
}
"""What ``evaluate.protocol: paper`` sets, whatever params.yaml says: the published numbers' protocol (DDPM, iDDPM,
EDM): one draw of ``sample.num_samples`` images (50,000 in the papers) against the whole training split with
torch-fidelity's InceptionV3, FID and IS over 10 splits."""
PAPER_SAMPLES = 50_000


def apply_protocol(raw: object) -> object:
    """Raw params with the preset of ``evaluate.protocol`` applied (:data:`PAPER_PROTOCOL`)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("evaluate"), dict) or \
            raw["evaluate"].get("protocol") != "paper":
        return raw
    return deep_merge(raw, PAPER_PROTOCOL)


class EvaluateConfig(Section):
    protocol: Protocol = "draws"
    """``draws``: every score is a mean with its spread over ``sample.draws`` draws, under each backend of
    ``features``. ``paper``: the protocol of the published numbers (:data:`PAPER_PROTOCOL`), scored in bounded
    memory; comparable with them at ``sample.num_samples: 50000``."""
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
    """Images per feature-network batch; each is one chunk of the work the processes share."""
    nproc_per_node: int = Field(1, ge=1, le=1024)
    """Processes (torchrun) on this machine that share the feature extraction; the scores do not depend on it."""
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _something_to_score(self) -> EvaluateConfig:
        if not self.features:
            raise ValueError("evaluate.features is empty; list at least one of: classifier, resnet, inception")
        distinct("evaluate.features", self.features, "a backend")
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
