"""The tiny project the end-to-end tests share: the real pipeline on tiny params, run once per test session by
`dvc repro` (the ``tiny_project`` fixture of conftest.py), and cheap copies of it for the tests that change it.

A copy is the project's folder copied whole (its git repository, DVC cache and lock file, outputs and MLflow
store): DVC sees every stage up to date, and the MLflow runs it holds keep their ids. The store's experiment keeps
its artifact location, the original project's ``mlruns/``, where new runs of the copy put their artifacts too.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from diffusionlab import quick
from diffusionlab.quick import QUICK
from diffusionlab.validation import deep_merge

from processes import PROJECT, run

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

TINY = deep_merge(QUICK, {
    "pipeline": {"datasets": ["digits"], "models": ["ddpm", "vlb", "vdm"]},
    "models": {"ddpm": {"family": "ddpm", "schedule": "linear", "timesteps": 50, "class_conditional": True,
                        "label_dropout": 0.1},
               "vlb": {"family": "vlb", "schedule": "cosine", "timesteps": 50, "loss": "vlb",
                       "importance_sampling": True},
               "vdm": {"family": "vdm", "gamma": "fixed", "weighting": "sigmoid", "noise_sampling": "adaptive",
                       "prediction": "v", "timesteps": 50},
               # not in the pipeline: tests/test_end_to_end.py adds them to a copy
               "flow": {"family": "flow", "timesteps": 10, "text_conditional": True, "network": "mmdit",
                        "label_dropout": 0.1},
               "flow_latent": {"family": "flow", "timesteps": 10, "network": "dit", "text_conditional": True,
                               "label_dropout": 0.1,
                               "autoencoder": {"steps": 30, "base_channels": 8, "latent_channels": 2,
                                               "batch_size": 16}}},
    # fp32 on every CPU (auto is bf16 on some): the tests compare processes, resumes and batch sizes exactly
    "train": {"bf16": False},
    "sample": {"bf16": False, "sweep_steps": [5, 20], "guidance_sweep": [0.0, 2.0], "repaint_resample": 2,
               "sampler_for": {"flow": "heun", "flow_latent": "euler"}},
    "text_encoder": {"held_out": ["thick 7"]},
    "restore": {"tasks": ["sr4", "box"], "models": ["ddpm"], "images": 10, "draws": 2, "batch_size": 10,
                "steps": {"ddrm": 3, "ddnm": 3, "pigdm": 3, "dps": 3, "repaint": 3}},
    "mlflow": {"system_metrics_interval": 0.2},  # the tiny train stages hold their run for a few seconds
})
"""The smoke run's budget (:data:`diffusionlab.quick.QUICK`) with the models, restoration tasks and settings the
end-to-end tests exercise."""
STAGES = ["check", "prepare@digits", "text_encoder@digits", "classifier@digits", "reference@digits", *[
    f"{stage}@digits-{model}" for model in ("ddpm", "vlb", "vdm") for stage in ("train", "sample", "evaluate")],
    "restore@digits-ddpm-sr4", "restore@digits-ddpm-box", "report"]
"""The stages of the tiny project's `dvc repro`."""


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` ran, in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def merge(base: dict, override: dict, top: bool = True) -> dict:
    """``base`` params with ``override`` merged in, section by section; a block of ``models`` is replaced whole."""
    out = dict(base)
    for key, value in override.items():
        if top and key == "models":
            out[key] = {**base.get(key, {}), **value}
        else:
            out[key] = merge(base[key], value, top=False) if isinstance(value, dict) and key in base else value
    return out


def activated(command: str) -> list[str]:
    """``command`` as the README writes it, typed into a fresh shell after the README's activation line."""
    return ["bash", "--noprofile", "--norc", "-c", f"source .venv/bin/activate && {command}"]


def shell(command: str, cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600):
    """Run :func:`activated` ``command`` to completion (see :func:`processes.run`)."""
    return run(activated(command), cwd, env, check=check, timeout=timeout)


def fresh_shell_env(dest: Path) -> dict[str, str]:
    """The environment of a new shell: the project's virtual environment neither active nor on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_")) and k != "VIRTUAL_ENV"}
    bins = {str(VENV / "bin"), str(Path(sys.executable).parent)}
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d and d not in bins)
    env.update(PYTHONPATH=str(dest / "src"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", **{PROJECT: str(dest)})
    return env


def make_project(dest: Path, overrides: dict) -> dict:
    """The project at ``dest`` as ``make quick`` builds it (:func:`diffusionlab.quick.make_project`), with
    ``overrides`` merged into params.yaml and ``.venv`` linked to the tests' environment; returns the environment of
    a fresh shell there. The package's compiled bytecode comes along, so that a stage started there compiles
    nothing."""
    if not (VENV / "bin" / "activate").is_file():
        pytest.fail(f"the tests run in the project's virtual environment ({sys.prefix} is not one): make test")
    quick.make_project(ROOT, dest, merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides), VENV)
    return fresh_shell_env(dest)


def copy_project(source: Path, dest: Path, overrides: dict | None = None) -> dict:
    """A copy of the project at ``source`` at ``dest`` (see the module's doc), with ``overrides`` merged into its
    params.yaml; returns the environment of a fresh shell there."""
    shutil.copytree(source, dest, symlinks=True)
    if overrides:
        write_params(dest, merge(read_params(dest), overrides))
    return fresh_shell_env(dest)


def read_params(dest: Path) -> dict:
    return yaml.safe_load((dest / "params.yaml").read_text())


def write_params(dest: Path, params: dict) -> None:
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
