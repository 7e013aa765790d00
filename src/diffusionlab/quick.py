"""The smoke run: every stage of the default pipeline on a tiny budget, in a project of its own (``make quick``).

    make quick                       # quick/: this checkout's pipeline on QUICK's params, then where its report is
    python -m diffusionlab.quick     # the same

The project in ``quick/`` is a copy of this one (its code, ``dvc.yaml``, and ``params.yaml`` with :data:`QUICK`
merged in) with a git repository and a DVC store of its own, so that neither this project's outputs nor its
params file change. Each call builds it afresh. The models train for a few dozen steps on 8-pixel digits and the
feature networks for a few dozen more, so the scores mean nothing: the run shows each stage, the report and the MLflow
runs, and that the pipeline works on this machine. The tests' tiny project is the same budget with more stages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from . import paths
from .results import timed
from .validation import deep_merge, read_yaml

QUICK: dict[str, Any] = {
    "datasets": {"digits": {"image_size": 8, "train_steps": 30, "batch_size": 16,
                            "unet": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                     "attention_resolutions": [4], "dropout": 0.0},
                            "dit": {"patch_size": 2, "hidden_size": 16, "depth": 2, "num_heads": 2}}},
    "train": {"log_every": 10, "warmup_steps": 5},
    "sample": {"steps": 10, "num_samples": 40, "batch_size": 40, "grid_size": 16, "strip_samples": 4,
               "strip_frames": 5, "sweep_steps": [5], "draws": 2, "attribute_samples": 60},
    "text_encoder": {"context_length": 10, "width": 16, "depth": 1, "num_heads": 2, "image_channels": 8,
                     "embed_dim": 16, "steps": 30, "batch_size": 32},
    "classifier": {"steps": 40, "width": 8, "feature_dim": 8},
    "resnet": {"steps": 40, "width": 8, "feature_dim": 8},
    # a classifier of 40 steps is far below the accuracy a score needs: the run checks the machinery, not the models
    "evaluate": {"min_classifier_accuracy": 0.0, "isc_splits": 2, "nll_images": 20, "nll_t_draws": 2,
                 "ode_images": 20, "ode_steps": 8, "kid_subsets": 10, "reference_images": 200},
}
"""What the smoke run sets over params.yaml: the default pipeline (its datasets and models as params.yaml names
them) on 8-pixel digits, every stage and every metric at a few seconds' work."""

FOLDER = Path("quick")
PROJECT_FILES = ("dvc.yaml", "pyproject.toml", "uv.lock", ".gitignore")
GIT_IDENTITY = ["-c", "user.name=diffusionlab", "-c", "user.email=diffusionlab@localhost"]


def make_project(source: Path, dest: Path, params: dict[str, Any], venv: Path) -> None:
    """A project at ``dest`` (an empty folder): ``source``'s code, ``dvc.yaml`` and DVC config, ``params``
    as its params.yaml, ``venv`` linked as its ``.venv``, all committed to a git repository of its own."""
    for name in PROJECT_FILES:
        shutil.copy(source / name, dest / name)
    for name in ("src", "stages"):
        shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("*.egg-info"))
    (dest / ".venv").symlink_to(venv.resolve(), target_is_directory=True)
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(source / ".dvc" / name, dest / ".dvc" / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], [*GIT_IDENTITY, "commit", "-qm", "project"]):
        subprocess.run(["git", *command], cwd=dest, check=True, capture_output=True)


def quick_params(source: Path) -> dict[str, Any]:
    """``source``'s params.yaml with :data:`QUICK` merged in."""
    return deep_merge(read_yaml(source / "params.yaml"), QUICK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusionlab.quick", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=FOLDER, help="the smoke run's project (default: quick/), "
                                                                  "replaced when it exists")
    args = parser.parse_args(argv)
    source = Path.cwd()
    if not (source / "dvc.yaml").is_file():
        print("error: run it from the project's root, where dvc.yaml is", file=sys.stderr)
        return 2
    dest = args.dest.resolve()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    make_project(source, dest, quick_params(source), Path(sys.prefix))
    os.chdir(dest)
    os.environ["PYTHONPATH"] = str(dest / "src")  # the copy's code, as its dvc.yaml tracks it
    code = timed([str(Path(sys.prefix) / "bin" / "dvc"), "repro"], out=paths.OUTPUTS / "run.json", root=source)
    if code:
        return code
    report = dest / paths.report() / "report.html"
    print(f"\nsmoke run done: {report}\n  its MLflow runs: cd {args.dest} && .venv/bin/python -m diffusionlab.ui"
          "\n  (the scores of a 30-step model mean nothing; make run trains the default models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
