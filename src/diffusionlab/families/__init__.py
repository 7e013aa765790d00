"""The registry of model families: ``models.<name>.family`` names one of :data:`FAMILIES`.

Each family is one module holding its params model and how its noise process is built; it registers
itself when imported below, one line per family. The process it builds shows samplers, guidance,
inverse problems and the likelihoods one face (:class:`diffusionlab.process.Process`).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from . import ddpm  # noqa: F401
from . import vlb  # noqa: F401
from . import vdm  # noqa: F401
from . import flow  # noqa: F401
from .base import FAMILIES, Family, FamilyParams

ModelParams = Annotated[Union[tuple(f.params for f in FAMILIES.values())], Field(discriminator="family")]  # noqa: UP007
"""A ``models.<name>`` block: the params of the family its ``family`` key names."""


def family_of(params: FamilyParams) -> Family:
    return FAMILIES[params.family]


__all__ = ["FAMILIES", "Family", "FamilyParams", "ModelParams", "family_of"]
