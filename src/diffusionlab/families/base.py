"""What every model family shares: the params every ``models.<name>`` block holds, and the face a family
shows the rest of the package (:class:`Family`).

A family's module defines its params model (a subclass of :class:`FamilyParams` whose ``family`` field
is a one-value ``Literal``) and how its noise process is built; the registry in
:mod:`diffusionlab.families` lists the families, and ``models.<name>`` is the union of their params
discriminated by ``family``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..process import Process


def _number(value: Any) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
"""A finite number, also as YAML 1.1 writes it (``1e-4``)."""


class Section(BaseModel):
    """A frozen params section: unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FamilyParams(Section):
    """Settings every model family has."""

    family: str
    timesteps: int = Field(1000, ge=2, le=100_000)
    """Discrete-time families: T. Continuous-time ones: the sampling steps when ``sample.steps`` is null."""
    class_conditional: bool = False
    """Train on the dataset's labels, for class-conditional sampling and classifier-free guidance."""
    label_dropout: Float = Field(0.1, ge=0.0, lt=1.0)
    """Rate at which a conditional model's label is replaced by the null label in training (guidance needs > 0)."""

    SAMPLERS: ClassVar[tuple[str, ...]] = ()
    """The ``sample.sampler`` values that can draw from this family."""
    DISCRETE: ClassVar[bool] = False
    """True when the network is trained on the steps 0..T-1 only (``sample.step_list`` applies)."""

    @property
    def discrete(self) -> bool:
        return self.DISCRETE


@dataclass(frozen=True)
class Family:
    """A model family as the rest of the package sees it: its name, its params model and the function
    that builds its noise process from them on a device."""

    name: str
    params: type[FamilyParams]
    build: Callable[[FamilyParams, torch.device | str], Process]


FAMILIES: dict[str, Family] = {}
"""Every registered family by name, in the order their modules were imported."""


def register(family: Family) -> Family:
    """List ``family`` in :data:`FAMILIES` (each family module registers its own when imported)."""
    if family.name in FAMILIES:
        raise ValueError(f"model family '{family.name}' is registered twice")
    FAMILIES[family.name] = family
    return family
