"""What every model family's params hold: the keys every ``models.<name>`` block has.

A family's ``params.py`` subclasses :class:`FamilyParams` with ``family`` a one-value ``Literal``; the
union of them, discriminated by ``family``, is :data:`diffusionlab.families.params.ModelParams`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from pydantic import Field, model_validator

from ..nn.autoencoder import AutoencoderConfig
from ..nn.networks import NetworkName
from ..validation import Float, Section


class FamilyParams(Section):
    """Settings every model family has."""

    family: str
    timesteps: int = Field(1000, ge=2, le=100_000)
    """Discrete-time families: T. Continuous-time ones: the sampling steps when ``sample.steps`` is null."""
    class_conditional: bool = False
    """Train on the dataset's labels, for class-conditional sampling and classifier-free guidance."""
    text_conditional: bool = False
    """Train on the dataset's captions (through the text encoder, ``text_encoder``), for prompts and classifier-free
    guidance against the empty prompt."""
    label_dropout: Float = Field(0.3, ge=0.0, lt=1.0)
    """Rate at which a conditional model's label (or caption) is replaced by the null label (the empty prompt) in
    training (guidance needs > 0)."""
    network: NetworkName | None = None
    """The backbone: ``unet``, ``dit`` (a transformer) or ``mmdit`` (SD3's joint-attention transformer, text models
    only); null takes the dataset's ``network``."""
    train_steps: int | None = Field(None, ge=1)
    """Training steps instead of the dataset's ``train_steps`` (e.g. two backbones at equal training time)."""
    autoencoder: AutoencoderConfig | None = None
    """A latent model (Rombach et al. 2022): its train stage trains this autoencoder on the training images (or
    re-uses the one it trained with these params), then the family on its scaled latents; samples are decoded.
    Null: a model on pixels."""

    SAMPLERS: ClassVar[tuple[str, ...]] = ()
    """The ``sample.sampler`` values that can draw from this family; the first is its default, drawn with when
    ``sample.sampler`` cannot draw from it and ``sample.sampler_for`` names none."""
    DISCRETE: ClassVar[bool] = False
    """True when the network is trained on the steps 0..T-1 only (``sample.step_list`` applies)."""

    @property
    def discrete(self) -> bool:
        return self.DISCRETE

    @property
    def recipe(self) -> str:
        """What the model is trained with, in a few words: the family's own :meth:`objective`, then its
        conditioning and, for a latent model, the autoencoder."""
        parts = [self.objective()]
        if self.class_conditional:
            parts.append(f"label dropout {self.label_dropout:g}")
        if self.text_conditional:
            parts.append(f"captions, text dropout {self.label_dropout:g}")
        if self.latent:
            parts.append("on latents")
        return "; ".join(parts)

    @model_validator(mode="after")
    def _one_condition(self) -> FamilyParams:
        if self.class_conditional and self.text_conditional:
            raise ValueError("class_conditional and text_conditional are both true: a model is conditioned on its "
                             "class or on its caption (whose words name the class); set one of them to false")
        if self.network == "mmdit" and not self.text_conditional:
            raise ValueError("network: mmdit attends to a prompt's tokens: set text_conditional: true, or use "
                             "network: dit")
        return self

    @abstractmethod
    def objective(self) -> str:
        """The family's parameterisation, noise levels and loss, in the papers' words (every family says it)."""

    @property
    def latent(self) -> bool:
        return self.autoencoder is not None
