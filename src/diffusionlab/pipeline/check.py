"""The check stage: the whole of params.yaml validated before anything runs.

Every other stage reads (and DVC tracks) only the keys it uses, so a typo in a key no early stage reads would
otherwise surface only when the stage that reads it starts, after the data and the feature networks were built.
This stage depends on the whole params file, runs first and stops the run with one line naming the key."""

from __future__ import annotations

import logging

from .. import paths
from ..config.params import Params
from ..io import write_json

log = logging.getLogger(__name__)


def check_stage(params: Params) -> None:
    """Validate the whole of params.yaml (done by the caller, :func:`~diffusionlab.pipeline.cli.run_stage`) and
    write the record the first stages depend on."""
    write_json(paths.checked_params(), {"params": "valid"})
    log.info("params.yaml is valid: datasets %s; models %s", ", ".join(params.pipeline.datasets),
             ", ".join(params.pipeline.models))
