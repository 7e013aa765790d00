"""A trained model as one object: what the train stage logs to MLflow and ``generate`` samples from.

``mlflow.pytorch.load_model("models:/diffusionlab-digits@best")`` returns a :class:`DiffusionModel`.
It pickles as plain data (the configuration and the weights), rebuilt by this package on load, so a
logged model does not depend on the layout of the classes' attributes.

Its sampling methods import the sampling layer when called: the train stage, which builds and logs the
model but never samples from it, then does not depend on (nor re-run for) a change of a sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config.params import RunConfig, network_problem
from ..config.sampling import SampleConfig
from ..core.process import Process
from ..errors import ConfigError
from ..nn.networks import Network
from ..validation import replace
from .checkpoint import Checkpoint, build_trained
from .latent import LatentCodec
from .text_encoding import TextEncoder


class DiffusionModel(nn.Module):
    """The EMA network of a trained model, its noise process and the configuration it was trained with."""

    def __init__(self, config: RunConfig, channels: int, network: Network, process: Process, step: int = 0,
                 codec: LatentCodec | None = None, text: TextEncoder | None = None):
        super().__init__()
        self.network = network
        self.process = process
        self.config, self.channels, self.step = config, channels, step
        self.codec = codec
        """A latent model's autoencoder (its network's ``channels`` are the latent's); None on pixels."""
        self.text = text
        """A text-conditioned model's text encoder: prompts -> conditions; None for any other."""

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> DiffusionModel:
        return cls(ckpt.config, ckpt.channels, ckpt.ema, ckpt.process, ckpt.step, ckpt.codec, ckpt.text)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> DiffusionModel:
        config = RunConfig.from_dict(state["config"])
        process, (network,) = build_trained(config, state["channels"], state["process"], [state["network"]], device,
                                            config.name)
        codec = LatentCodec.from_state(state["autoencoder"], device) if "autoencoder" in state else None
        text = TextEncoder.from_state(state["text_encoder"], device) if "text_encoder" in state else None
        return cls(config, state["channels"], network, process, state["step"], codec, text)

    def state(self) -> dict[str, Any]:
        process = self.process.state_dict()
        return {"config": self.config.to_dict(), "channels": self.channels, "step": self.step,
                "network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
                "process": {k: v.detach().cpu() for k, v in process.items()},
                **({"autoencoder": self.codec.state()} if self.codec is not None else {}),
                **({"text_encoder": self.text.state()} if self.text is not None else {})}

    def __reduce__(self) -> tuple:
        return _rebuild, (self.state(),)

    def to_device(self, device: torch.device | str) -> DiffusionModel:
        """This model with its network and noise process on ``device``."""
        return DiffusionModel.from_state(self.state(), device)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it makes."""
        size = self.config.data.image_size
        return (self.codec.channels if self.codec is not None else self.channels, size, size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the sampler draws: the image, or a latent model's latent."""
        return (self.channels, self.config.model_size, self.config.model_size)

    @property
    def decode(self) -> Callable[[Tensor], Tensor] | None:
        return self.codec.decode if self.codec is not None else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's output at noisy images ``x`` and times ``t`` (and labels ``y``)."""
        return self.network(x, t, y)

    def sample_config(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                      guidance: float | None = None, classes: tuple[int, ...] | list[int] = (),
                      shift: float | None = None, prompts: tuple[str, ...] | list[str] = ()) -> SampleConfig:
        """The model's ``sample`` params with these changes, checked against the model."""
        changes = {k: v for k, v in (("sampler", sampler), ("steps", steps), ("eta", eta), ("guidance", guidance),
                                     ("shift", shift)) if v is not None}
        if sampler is not None or steps is not None:
            changes["step_list"] = ()
        if guidance is not None and guidance < 0:
            raise ConfigError(f"the guidance scale must be >= 0, got {guidance}")
        s = replace(self.config.sample, **changes, classes=tuple(classes), prompts=tuple(prompts))
        if classes and self.text is not None:
            raise ConfigError(f"classes {list(classes)} were asked of {self.config.name}, which is text-conditioned: "
                              "give it prompts instead (--prompt \"a thick 7\")")
        if prompts and self.text is None:
            raise ConfigError(f"prompts were given to {self.config.name}, which is not text-conditioned (trained "
                              "without text_conditional: true)" + ("; ask for classes instead (--class 7)"
                                                                   if self.num_classes else ""))
        if classes and not self.num_classes:
            raise ConfigError(f"classes {list(classes)} were asked of {self.config.name}, which is unconditional "
                              "(trained without class_conditional: true); ask for no class")
        m = self.config.model
        if s.sampler not in type(m).SAMPLERS:
            raise ConfigError(f"sampler '{s.sampler}' cannot draw from {self.config.name} (family '{m.family}'); "
                              f"its samplers: {', '.join(type(m).SAMPLERS)}")
        problem = network_problem(s, self.config.data, m.network)
        if problem:
            raise ConfigError(f"{self.config.name}: {problem}")
        if m.discrete and s.steps is not None and not 1 <= s.steps <= m.timesteps:
            raise ConfigError(f"{s.steps} steps is outside 1..{m.timesteps}, the steps of {self.config.name}")
        return s

    def prompts(self, n: int, s: SampleConfig) -> list[str] | None:
        """The prompts of ``n`` images drawn with ``s``: ``sample.prompts`` in turn, or each class's when empty;
        None for a model that is not text-conditioned."""
        return None if self.text is None else self.text.prompts(n, s.prompts)

    def labels(self, n: int, s: SampleConfig) -> np.ndarray | None:
        """What ``n`` images drawn with ``s`` are conditioned on: their classes [n], their prompts' conditions
        [n, 1 + L, D] (:meth:`prompts`), or None for an unconditional model."""
        from ..sampling.guidance import requested_labels  # deps: callers

        if self.text is not None:
            return self.text.conditions(self.prompts(n, s))
        return requested_labels(n, s.classes, self.num_classes) if self.num_classes else None

    def sample(self, n: int, *, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               classes: tuple[int, ...] | list[int] = (), guidance: float | None = None, shift: float | None = None,
               seed: int = 0, batch_size: int = 256, progress: Callable[[int], None] | None = None,
               prompts: tuple[str, ...] | list[str] = ()) -> np.ndarray:
        """``n`` uint8 images [n, C, H, W]; sampler, steps, eta, guidance and shift default to the model's
        ``sample`` params. A class-conditional model draws ``classes`` in turn (each class when empty), a
        text-conditioned one ``prompts`` in turn (each class's prompt when empty)."""
        s = self.sample_config(sampler, steps, eta, guidance, classes, shift, prompts)
        return self.sample_with(n, s, self.sampler(s), seed, batch_size, progress)

    def sampler(self, s: SampleConfig) -> Any:
        """The sampler ``s`` names, on this model's noise process (a :class:`~diffusionlab.sampling.base.Sampler`)."""
        from ..sampling.samplers import make_sampler  # deps: callers

        return make_sampler(s, self.process, default_steps=self.config.model.timesteps)

    def sample_with(self, n: int, s: SampleConfig, sampler: Any, seed: int = 0, batch_size: int = 256,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """``n`` uint8 images drawn with the checked sampling config ``s`` (see :meth:`sample_config`) and
        its ``sampler`` (:meth:`sampler`)."""
        from ..sampling.generation import generate  # deps: callers
        from ..sampling.guidance import ConditionalModel, SkipLayerGuidance  # deps: callers

        net = ConditionalModel(self.network, self.process, self.channels, s.guidance, SkipLayerGuidance.of(s),
                               self.decode)
        return generate(net, sampler, n, self.sample_shape, batch_size, self.device, seed, 2, self.labels(n, s),
                        progress).images


def _rebuild(state: dict[str, Any]) -> DiffusionModel:
    return DiffusionModel.from_state(state)
