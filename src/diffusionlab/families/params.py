"""The params of every model family, one line each: a ``models.<name>`` block validates against their union,
discriminated by its ``family`` key. Torch-free: the config imports this module and no process."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import FamilyParams
from .ddpm.params import DDPMParams
from .edm.params import EDMParams
from .flow.params import FlowParams
from .vdm.params import VDMParams
from .vlb.params import VLBParams

PARAMS: dict[str, type[FamilyParams]] = {p.model_fields["family"].default: p for p in (DDPMParams, VLBParams, VDMParams, FlowParams, EDMParams)}
"""Every family's params model by name, in the order params errors list them."""

ModelParams = Annotated[Union[tuple(PARAMS.values())], Field(discriminator="family")]  # noqa: UP007
"""A ``models.<name>`` block: the params of the family its ``family`` key names."""
