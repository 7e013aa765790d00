"""Command-line entry shared by the stage scripts: arguments, params, logging, clean errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

from .. import timeline
from ..errors import EXPECTED_ERRORS
from ..validation import read_yaml, validate


FINISHED_FORMAT = "%s finished in %.1f s (peak memory %s)"
FINISHED_LINE = re.compile(r"diffusionlab: (\S+) finished in ([0-9.]+) s"
                           r"(?: \(peak memory (\d+) MiB(?:, GPU (\d+) MiB)?\))?")
"""A stage's closing line (:data:`FINISHED_FORMAT` under the ``diffusionlab`` logger): its name, seconds and, where
measured, its process's peak resident memory and the peak memory torch allocated on the GPU, in MiB."""


def peak_memory() -> str:
    """This process's peak resident memory and, once it has used CUDA, the peak memory torch allocated there."""
    rss, gpu = timeline.peak_rss_mib(), timeline.peak_gpu_mib()
    text = "not measured" if rss is None else f"{rss:.0f} MiB"
    return text if gpu is None else f"{text}, GPU {gpu:.0f} MiB"


def run_stage(stage: Callable[..., None], with_model: bool, argv: list[str] | None = None,
              with_dataset: bool = True, with_task: bool = False) -> None:
    """Parse ``--dataset`` (and ``--model``, ``--task``), load params.yaml and run
    ``stage(params[, dataset[, model[, task]]])``.

    ``params`` is validated as the type ``stage`` annotates it with: the whole of params.yaml
    (:class:`diffusionlab.config.params.Params`) or the view of the sections that stage reads.

    Expected failures (bad params, unavailable data, missing inputs) exit with status 2 and a
    one-paragraph message instead of a traceback.
    """
    timeline.mark("imported")
    parser = argparse.ArgumentParser(description=stage.__doc__)
    if with_dataset:
        parser.add_argument("--dataset", required=True)
    if with_model:
        parser.add_argument("--model", required=True)
    if with_task:
        parser.add_argument("--task", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [getattr(args, name) for name, wanted in (("dataset", with_dataset), ("model", with_model),
                                                      ("task", with_task)) if wanted]
    target = "-".join(names)
    log = logging.getLogger("diffusionlab")
    name = stage.__module__.rsplit(".", 1)[-1] + (f"@{target}" if target else "")
    start = time.perf_counter()
    timeline.mark("work_start")
    try:
        stage(validate(typing.get_type_hints(stage)["params"], read_yaml(args.params)), *names)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    timeline.mark("work_end")
    timeline.write(name)
    if "WORLD_SIZE" not in os.environ:  # under torchrun, the command that started it says it
        log.info(FINISHED_FORMAT, name, time.perf_counter() - start, peak_memory())
    if os.environ.get(MODULES_LOG):
        record_modules(Path(os.environ[MODULES_LOG]), name)


MODULES_LOG = "DIFFUSIONLAB_MODULES_LOG"
"""When set, every stage appends the package modules it ran to this file (a JSON line): what its DVC deps must hold."""
HEAVY = ("torch_fidelity", "torchvision", "torch._dynamo", "mlflow.pytorch")
"""Libraries a stage loads only where its work needs them: torch-fidelity to score features, torchvision for that and
for image grids, torch._dynamo with torchvision's operators or a torch.optim optimizer, MLflow's pytorch flavour to log
a model."""


def record_modules(path: Path, stage: str) -> None:
    """Append ``{"stage": ..., "modules": [the package's source files loaded in this process], "heavy": [those of
    :data:`HEAVY` it loaded]}`` to ``path``."""
    package = Path(__file__).resolve().parents[1]
    files = sorted({str(Path(m.__file__).resolve().relative_to(package.parent.parent)) for m in list(sys.modules.values())
                    if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(package)})
    with path.open("a") as f:
        f.write(json.dumps({"stage": stage, "modules": files, "heavy": [m for m in HEAVY if m in sys.modules]}) + "\n")
