"""The names of the samplers, which params are checked against before anything is built."""

from __future__ import annotations

from typing import Literal, get_args

SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "euler", "heun"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
MULTISTEP_SAMPLERS = ("dpmpp_2m", "dpmpp_2m_sde")
"""Samplers that carry the previous step's prediction: they choose their own steps and run forward only."""
ODE_SAMPLERS = ("euler", "heun")
"""Solvers of the probability-flow ODE that every family's process can drive (:mod:`diffusionlab.sampling.ode`)."""
ONE_STEP_SAMPLERS = ("ddpm", "ddim", "euler")
"""Samplers whose step needs only the current output: inpainting and round trips use them."""
VP_SAMPLERS = SAMPLERS
"""What a variance-preserving process can use: its own samplers and the ODE solvers."""
EDM_SAMPLERS = ("heun", "euler", *MULTISTEP_SAMPLERS)
"""What the variance-exploding ``edm`` family can use: Heun first (Karras et al., Algorithm 1, with churn
Algorithm 2), the ODE's Euler steps and the DPM-Solvers."""


def evaluations_per_step(sampler: str, steps: int) -> int:
    """Network evaluations of ``steps`` steps of ``sampler`` (unguided): one per step, 2 steps - 1 for heun."""
    return 2 * steps - 1 if sampler == "heun" else steps


def network_evaluations(steps: int, guidance: float | None, sampler: str = "ddim") -> int:
    """Network evaluations per image: one per step (2 steps - 1 for heun), twice as many under guidance other
    than w = 0 or 1 (None: unconditional)."""
    return evaluations_per_step(sampler, steps) * (2 if guidance not in (None, 0.0, 1.0) else 1)


RestorationSolver = Literal["ddrm", "ddnm", "pigdm", "dps", "repaint"]
RESTORATION_SOLVERS: tuple[str, ...] = get_args(RestorationSolver)
RestorationTask = Literal["sr2", "sr4", "blur", "box", "random", "denoise"]
"""Degradations of the restore stage: super-resolution by 2x2 or 4x4 average pooling, a Gaussian blur, a centred
box and random pixels to inpaint, and denoising (A = I)."""
RESTORATION_TASKS: tuple[str, ...] = get_args(RestorationTask)
INPAINTING_TASKS = ("box", "random")
"""The tasks whose measurement is a mask of pixels, which RePaint and the fill baseline restore."""
