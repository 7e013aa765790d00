"""How each model family's noise process is built from its params, one line per family."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.process import Process
from .base import FamilyParams
from .ddpm.process import build as ddpm
from .edm.process import build as edm
from .flow.process import build as flow
from .vdm.process import build as vdm
from .vlb.process import build as vlb

BUILDERS: dict[str, Callable[..., Process]] = {"ddpm": ddpm, "vlb": vlb, "vdm": vdm, "flow": flow, "edm": edm}
"""Every family's builder ``(params, device) -> Process`` by name."""


def build_process(params: FamilyParams, device: torch.device | str = "cpu") -> Process:
    """The noise process of a ``models.<name>`` block, built by its family's own module."""
    return BUILDERS[params.family](params, device)
