"""The params sections that name samplers and restoration solvers: ``sample`` and ``restore``. Torch-free; the
stages that sample or restore depend on this module and on the names it checks against
(:mod:`diffusionlab.sampling.names`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from ..sampling.names import INPAINTING_TASKS, MULTISTEP_SAMPLERS, RestorationSolver, RestorationTask, SamplerName
from ..validation import Count, Float, Section, Tuple, distinct
from .sections import Bf16Choice, SampleCounts


class SampleConfig(SampleCounts):
    """The sample stage: the sampler and its knobs, guidance, the figures; the counts are :class:`SampleCounts`'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: SamplerName = "ddpm"
    """ddpm: ancestral (respaced below T steps); ddim: DDIM with eta; dpmpp_2m: DPM-Solver++(2M), for 10-25
    steps, and dpmpp_2m_sde its stochastic form; euler and heun solve the probability-flow ODE, for every
    family, in the EDM formulation of Karras et al. 2022 for the diffusion families (heun: second order,
    2N - 1 network evaluations for N steps)."""
    sampler_for: dict[str, SamplerName] = Field(default_factory=dict)
    """The sampler of these models instead of ``sampler`` (``{flow: euler}``: a flow beside ancestral DDPM)."""
    steps: Count | None = 50
    """Number of reverse steps; ``null`` means every step of the model (T)."""
    eta: Float = Field(0.0, ge=0)
    shift: Float = Field(1.0, gt=0)
    """Time shift s of Esser et al. 2024 (SD3) for euler and heun: t' = s t / (1 + (s - 1) t); s > 1 spends
    more steps at high noise."""
    grid: Literal["default", "karras"] = "default"
    """The grid of euler, heun and the DPM-Solvers: ``default`` (the family's time grid with ``shift`` for the ODE
    solvers, uniform in log-SNR for the DPM-Solvers) or ``karras`` (Karras et al. 2022, eq. 5: levels sigma / alpha
    rho-spaced between the family's ends, k-diffusion's "Karras" samplers; not for a flow)."""
    rho: Float = Field(7.0, gt=0)
    """The Karras grid's exponent."""
    clip_denoised: bool = True
    churn: Float = Field(0.0, ge=0)
    """S_churn of Karras et al. 2022 (Algorithm 2) for heun on an ``edm`` model: each step at a level in
    [churn_tmin, churn_tmax] starts from a level raised by a factor 1 + min(churn / N, sqrt(2) - 1) with fresh
    noise; 0 is the deterministic Algorithm 1."""
    churn_tmin: Float = Field(0.0, ge=0)
    churn_tmax: Float | None = Field(None, ge=0)
    """null: no upper bound."""
    churn_noise: Float = Field(1.0, gt=0)
    """S_noise: the fresh noise's scale (slightly above 1 offsets the denoiser's loss of detail)."""
    batch_size: Count = 500
    """Images per network batch of each process; the images do not depend on it (one seed per image)."""
    nproc_per_node: int = Field(1, ge=1, le=1024)
    """Processes (torchrun) on this machine that share the images; the images do not depend on it."""
    bf16: Bf16Choice = "auto"
    """bf16 autocast of the network's evaluations (:data:`~diffusionlab.config.sections.Bf16Choice`); the sampler's
    arithmetic stays fp32. sample.json (``precision``) and the run (tag ``sample_precision``) record what it used."""
    grid_size: Count = 64
    strip_samples: Count = 8
    strip_frames: int = Field(10, ge=2)
    seed: int = Field(1, ge=0)
    """Image i of draw d starts from a generator seeded by (seed, d, i)."""
    sweep_steps: Tuple[Count] = (10, 25)
    """Further step counts whose samples are scored too (FID against steps)."""
    step_list: Tuple[Annotated[int, Field(ge=0)]] = ()
    """Explicit model steps (0..T-1) for the ``ddpm`` and ``ddim`` samplers of discrete-time models."""
    guidance: Float = Field(1.0, ge=0)
    """Classifier-free guidance scale w of class-conditional models: 0 unconditional, 1 conditional, > 1 guided."""
    classes: Tuple[int] = ()
    """Classes a class-conditional model is asked for, repeated in order; empty: every class in turn."""
    prompts: Tuple[str] = ()
    """What a text-conditioned model draws, in turn (empty: the caption of each class alone, "a 7")."""
    attribute_samples: int = Field(300, ge=0)
    """Images per draw a text-conditioned model draws of the prompts that ask for one attribute's word ("a thick
    7"), scored for how well they have it; 0: none."""
    guidance_sweep: Tuple[Annotated[Float, Field(ge=0)]] = (0.0,)
    """Further guidance scales whose samples are scored too (class accuracy, FID and IS against w)."""
    ema_widths: Tuple[Annotated[Float, Field(gt=0, lt=0.28)]] = ()
    """Further EMA widths sigma_rel (Karras et al. 2024's post-hoc EMA, rebuilt from the train stage's ``phema/``
    snapshots: set ``train.phema_widths``) whose samples at the main setting are scored too (FID against the width,
    the best one against the default EMA with Welch's test)."""
    repaint_resample: int = Field(5, ge=1, le=100)
    """RePaint resamplings per step in the inpainting figure (1: plain replacement)."""
    slg_scale: Float = Field(0.0, ge=0)
    """Skip-layer guidance of Stable Diffusion 3.5 (transformer backbones only): the prediction gains
    slg_scale (conditional - conditional with ``slg_layers`` skipped); 0 is off (SD3.5 Medium uses 2.5)."""
    slg_layers: Tuple[Annotated[int, Field(ge=0)]] = ()
    """The transformer blocks (from 0) left out of the skip-layer prediction (SD3.5 Medium: 7, 8, 9 of 24)."""
    slg_start: Float = Field(0.01, ge=0, le=1)
    """Skip-layer guidance applies from this fraction of the way from noise to data ..."""
    slg_end: Float = Field(0.2, ge=0, le=1)
    """... to this one, in rectified-flow time t = sigma / (alpha + sigma) of the sampler's current step."""

    @model_validator(mode="after")
    def _lists_fit(self) -> SampleConfig:
        if self.step_list and self.sampler not in ("ddpm", "ddim"):
            how = ("DPM-Solver++ chooses its own uniform-logSNR steps from sample.steps"
                   if self.sampler in MULTISTEP_SAMPLERS else f"{self.sampler} spaces sample.steps by sample.shift")
            raise ValueError(f"sample.step_list applies to the ddpm and ddim samplers; {how}: empty sample.step_list")
        distinct("sample.step_list", self.step_list, "a step")
        distinct("sample.sweep_steps", self.sweep_steps, "a step count")
        distinct("sample.guidance_sweep", self.guidance_sweep, "a scale")
        distinct("sample.ema_widths", self.ema_widths, "a width")
        distinct("sample.slg_layers", self.slg_layers, "a block")
        if self.slg_start >= self.slg_end:
            raise ValueError(f"sample.slg_start {self.slg_start:g} must be below sample.slg_end {self.slg_end:g}")
        return self

    @property
    def skips_layers(self) -> bool:
        """Whether skip-layer guidance is on: a scale above 0 and blocks to skip."""
        return self.slg_scale > 0 and bool(self.slg_layers)


RESTORE_STEPS = {"ddrm": 20, "ddnm": 20, "pigdm": 20, "dps": 100, "repaint": 20}
"""Each solver's steps unless ``restore.steps`` names it: DDRM's 20 (Kawar et al. 2022), DDNM's and PiGDM's 20 of
their papers' 100, DPS's 100 of its 1000 (the default budget on CPU)."""


class RestoreConfig(Section):
    """The restore stage: each task's measurement of held-out images restored by each solver, over draws."""

    tasks: Tuple[RestorationTask] = ()
    """Each task is a stage restore@<dataset>-<model>-<task> per model of ``models``; empty: there are none (they
    are out of the default run)."""
    models: Tuple[str] = ("ddpm", "vlb", "vdm")
    """The models of ``pipeline.models`` that restore, as priors on pixels (no latent model)."""
    solvers: Tuple[RestorationSolver] = ("ddrm", "ddnm", "pigdm", "dps", "repaint")
    """Every solver restores every task it can; ``repaint`` restores the inpainting tasks (box, random) only."""
    images: Count = 100
    """Held-out images restored (the first of the test split), the count every score is computed at."""
    draws: int = Field(3, ge=2, le=100)
    """Independent draws of the solvers' randomness on the same measurements: scores are mean and std over them."""
    steps: dict[RestorationSolver, Count] = Field(default_factory=dict)
    """Steps of these solvers on the model's time grid instead of :data:`RESTORE_STEPS` (RePaint's step takes
    ``repaint_resample`` network evaluations)."""
    sigma_y: Float = Field(0.0, ge=0)
    """Measurement noise y = A x + sigma_y n of every task, in the model range [-1, 1]."""
    sigma_y_for: dict[RestorationTask, Annotated[Float, Field(ge=0)]] = Field(
        default_factory=lambda: {"denoise": 0.2})
    """The measurement noise of these tasks instead of ``sigma_y``."""
    eta: Float = Field(0.85, ge=0, le=1)
    """ddrm and ddnm: the share of fresh noise in each step (their papers' eta)."""
    eta_b: Float = Field(1.0, ge=0, le=1)
    """ddrm: how far a measured coefficient is pulled onto the measurement (1: onto it)."""
    ddim_eta: Float = Field(1.0, ge=0, le=1)
    """pigdm and dps: DDIM's eta of their steps (1: ancestral)."""
    dps_step: Float = Field(1.0, gt=0)
    """DPS's step size zeta on grad ||y - A x0_hat||."""
    pigdm_form: Literal["paper", "score"] = "score"
    """pigdm's guidance: ``score`` (g added to the model's score in the DDIM step, vanishing at low noise; better on
    the digits models, docs/restoration.md) or ``paper`` (its Algorithm 1: alpha_s alpha_t r_t^2 g added after each
    DDIM step, of the same order at every step)."""
    repaint_resample: int = Field(2, ge=1, le=100)
    blur_width: Float = Field(1.0, gt=0)
    """Standard deviation of the Gaussian blur in pixels (kernel truncated at 3 widths)."""
    blur_boundary: Literal["reflect", "zero"] = "reflect"
    blur_cutoff: Float = Field(0.03, gt=0, lt=1)
    """The blur's singular values below it (times the largest) are lost, as in DDRM's deblurring: without a cutoff
    a noiseless blur is invertible and the pseudo-inverse restores it exactly."""
    box_size: Float = Field(0.5, gt=0, lt=1)
    """Side of the centred square to inpaint, as a fraction of the image side."""
    keep: Float = Field(0.25, gt=0, le=1)
    """Random-pixel inpainting: the fraction of pixels measured (one mask, seeded by ``seed``)."""
    prior: Literal["unconditional", "class"] = "unconditional"
    """What a class-conditional model restores with: its unconditional branch (w = 0), or the true class (w = 1)."""
    clip_denoised: bool = True
    batch_size: Count = 100
    seed: int = Field(0, ge=0)
    """Masks and measurement noise come from it (the same in every draw); draw d of image i from (seed, d, i)."""

    def steps_of(self, solver: str) -> int:
        return self.steps.get(solver, RESTORE_STEPS[solver])

    def sigma_of(self, task: str) -> float:
        return self.sigma_y_for.get(task, self.sigma_y)

    @model_validator(mode="after")
    def _tasks_fit(self) -> RestoreConfig:
        distinct("restore.tasks", self.tasks, "a task")
        distinct("restore.models", self.models, "a model")
        distinct("restore.solvers", self.solvers, "a solver")
        if "denoise" in self.tasks and self.sigma_of("denoise") == 0:
            raise ValueError("restore.tasks has denoise, whose measurement is the image itself at sigma_y 0: set "
                             "restore.sigma_y_for.denoise > 0 (e.g. 0.2), or drop denoise")
        if self.tasks and "repaint" in self.solvers and not set(INPAINTING_TASKS) & set(self.tasks):
            raise ValueError(f"restore.solvers has repaint, which restores masked pixels only "
                             f"({', '.join(INPAINTING_TASKS)}), and restore.tasks has none of them: add one, or "
                             "drop repaint")
        return self
