"""Command-line entry shared by the stage scripts: arguments, params, logging, clean errors."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from .config import Params, load_params
from .errors import EXPECTED_ERRORS


def run_stage(stage: Callable[..., None], with_model: bool, argv: list[str] | None = None,
              with_dataset: bool = True) -> None:
    """Parse ``--dataset`` (and ``--model``), load params.yaml and run ``stage(params[, dataset[, model]])``.

    Expected failures (bad params, unavailable data, missing inputs) exit with status 2 and a
    one-paragraph message instead of a traceback.
    """
    parser = argparse.ArgumentParser(description=stage.__doc__)
    if with_dataset:
        parser.add_argument("--dataset", required=True)
    if with_model:
        parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [getattr(args, name) for name, wanted in (("dataset", with_dataset), ("model", with_model)) if wanted]
    target = "-".join(names)
    log = logging.getLogger("diffusionlab")
    start = time.perf_counter()
    try:
        params: Params = load_params(args.params)
        stage(params, *names)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    name = stage.__module__.rsplit(".", 1)[-1] + (f"@{target}" if target else "")
    log.info("%s finished in %.1f s", name, time.perf_counter() - start)
