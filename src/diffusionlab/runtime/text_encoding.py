"""The text encoder of text-conditioned models: a tokenizer trained on a dataset's training captions and a small
CLIP trained contrastively on its (image, caption) pairs (Adam, a random phrasing of each image's caption per
step). Its :meth:`TextEncoder.state` (the tokenizer's JSON, the weights, the params, the digest of what it was trained
on, the prompt of each class) is saved by its stage and in the checkpoint of every model trained with it, so that a
checkpoint turns prompts into conditions on its own.

With ``text_encoder.pretrained`` the conditions come from a CLIP text model of ``transformers`` in a local folder
(:class:`PretrainedText`: its pooled output, then its last hidden states, as Stable Diffusion takes them); the state
then holds that folder's path and digest, and loading checks that the folder is still what the model trained with."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, StageInputError
from ..io import atomic_path
from ..nn.clip import CLIP, TextEncoderConfig
from ..tensors import BatchOrder, to_model_range
from ..text import PromptTokenizer, cycled, phrasing_ids

log = logging.getLogger(__name__)
ENCODER_FILE = "text_encoder.pt"


@dataclass
class PretrainedText:
    """A CLIP text model and its tokenizer, loaded from a folder ``save_pretrained`` wrote (no download)."""

    path: str
    digest: str
    model: torch.nn.Module
    tokenizer: Any
    length: int

    @classmethod
    def load(cls, path: str | Path, length: int, width: int, device: torch.device | str = "cpu") -> PretrainedText:
        """The model at ``path``, padded or truncated to ``length`` tokens; its hidden size must be ``width``."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"text_encoder.pretrained {path} holds no config.json: give a folder that "
                              "transformers' save_pretrained wrote with a CLIP text model and its tokenizer")
        from transformers import AutoTokenizer, CLIPTextModel

        try:
            model = CLIPTextModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"text_encoder.pretrained {path} is not a CLIP text model with its tokenizer: "
                              f"{err}") from None
        hidden, positions = model.config.hidden_size, model.config.max_position_embeddings
        if hidden != width:
            raise ConfigError(f"text_encoder.width is {width} but the pretrained text model at {path} has hidden "
                              f"size {hidden}: set text_encoder.width: {hidden}")
        if length > positions:
            raise ConfigError(f"text_encoder.context_length is {length} but the pretrained text model at {path} "
                              f"takes at most {positions} tokens: set text_encoder.context_length <= {positions}")
        return cls(str(path), folder_digest(folder), model.to(device).eval(), tokenizer, length)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids [N, length] (int64) of ``prompts``, padded or truncated as the model's tokenizer does."""
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.length,
                             return_tensors="np")["input_ids"]
        return ids.astype(np.int64)

    @torch.no_grad()
    def condition_of_ids(self, ids: Tensor) -> Tensor:
        """[B, 1 + L, D]: the pooled output, then the last hidden states."""
        out = self.model(input_ids=ids)
        return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)


def folder_digest(folder: Path) -> str:
    """A short hash of every file's name and bytes in ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class TextEncoder:
    """A tokenizer and its CLIP: prompts -> the condition [B, 1 + L, D] of a text-conditioned network."""

    tokenizer: PromptTokenizer
    clip: CLIP
    config: TextEncoderConfig
    digest: str
    class_prompts: list[str] = field(default_factory=list)
    """The caption of each class alone ("a 7", "a photo of a cat"): the prompts drawn when none are asked for."""
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    pretrained: PretrainedText | None = None
    """The pretrained text model that conditions the networks; None: the CLIP's own text transformer."""

    @property
    def conditioning_tokenizer(self) -> PromptTokenizer | PretrainedText:
        """Prompts -> the token ids the conditions are computed from (:meth:`condition_of_ids`)."""
        return self.pretrained or self.tokenizer

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def prompts(self, n: int, asked: tuple[str, ...] | list[str] = ()) -> list[str]:
        """``n`` prompts: ``asked`` in turn, or each class's prompt when it is empty."""
        return cycled(list(asked or self.class_prompts), n)

    def ids(self, prompts: list[str]) -> Tensor:
        return torch.from_numpy(self.tokenizer(prompts)).to(self.device)

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> Tensor:
        """[B, 1 + L, D] of ``prompts``: the pooled vector, then the token states (no gradient)."""
        ids = torch.from_numpy(self.conditioning_tokenizer(prompts)).to(self.device)
        return self.condition_of_ids(ids)

    def conditions(self, prompts: list[str]) -> np.ndarray:
        """float32 [N, 1 + L, D] of ``prompts`` on the CPU, each distinct prompt encoded once."""
        unique = sorted(set(prompts))
        encoded = self.condition(unique).float().cpu().numpy()
        where = {p: i for i, p in enumerate(unique)}
        return encoded[[where[p] for p in prompts]]

    @torch.no_grad()
    def condition_of_ids(self, ids: Tensor) -> Tensor:
        """[B, 1 + L, D] of token ids of :attr:`conditioning_tokenizer`."""
        return self.pretrained.condition_of_ids(ids) if self.pretrained else self.clip.text.condition(ids)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """CLIP score [B] of images [B, C, H, W] in [-1, 1] against their prompts."""
        return self.clip.score(images.to(self.device), self.ids(prompts))

    def state(self) -> dict[str, Any]:
        """Loadable with ``torch.load(weights_only=True)``: see :meth:`from_state`."""
        return {"tokenizer": self.tokenizer.to_json(), "weights": {k: v.detach().cpu() for k, v in
                                                                    self.clip.state_dict().items()},
                "config": self.config.model_dump(), "image_channels": self.clip.image.in_channels,
                "digest": self.digest, "class_prompts": list(self.class_prompts), "history": self.history,
                "seconds": self.seconds, "pretrained": {"path": self.pretrained.path, "digest": self.pretrained.digest}
                if self.pretrained else None}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> TextEncoder:
        cfg = TextEncoderConfig.model_validate(state["config"])
        tokenizer = PromptTokenizer.from_json(state["tokenizer"], cfg.context_length)
        clip = CLIP(tokenizer.vocab_size, state["image_channels"], cfg, tokenizer.pad_id, tokenizer.eos_id)
        clip.load_state_dict(state["weights"])
        pretrained = None
        if state.get("pretrained"):
            saved = state["pretrained"]
            if not Path(saved["path"]).is_dir():
                raise StageInputError(f"the text encoder conditions on the pretrained text model at {saved['path']}, "
                                      "which is missing: put it back there, or retrain without it")
            pretrained = PretrainedText.load(saved["path"], cfg.context_length, cfg.width, device)
            if pretrained.digest != saved["digest"]:
                raise StageInputError(f"the pretrained text model at {saved['path']} is not the one the text encoder "
                                      "was trained with (its files changed): re-run dvc repro -f text_encoder@<dataset>")
        return cls(tokenizer, clip.to(device).eval(), cfg, state["digest"], list(state["class_prompts"]),
                   state["history"], float(state["seconds"]), pretrained)


def class_prompts(captions: list[list[str]], labels: np.ndarray, num_classes: int) -> list[str]:
    """The first phrasing of the first training image of each class (the class alone, for written captions)."""
    first = {}
    for phrasings, y in zip(captions, labels):
        first.setdefault(int(y), phrasings[0])
    return [first.get(c, "") for c in range(num_classes)]


def encoder_digest(cfg: TextEncoderConfig, captions: list[list[str]], images: np.ndarray,
                   pretrained: PretrainedText | None = None) -> str:
    """What a text encoder is trained on, as a short hash: its params, the captions, the images and the pretrained
    text model's files."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode())
    h.update(json.dumps(captions).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update((pretrained.digest if pretrained else "").encode())
    return h.hexdigest()[:16]


def train_text_encoder(cfg: TextEncoderConfig, images: np.ndarray, captions: list[list[str]],
                       device: torch.device | str = "cpu", log_every: int = 100,
                       prompts: list[str] | None = None) -> TextEncoder:
    """Train the tokenizer on every phrasing of ``captions`` [N][P] and the CLIP on uint8 images [N, C, H, W];
    ``prompts``: each class's prompt (:func:`class_prompts`)."""
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    pretrained = (PretrainedText.load(cfg.pretrained, cfg.context_length, cfg.width, device) if cfg.pretrained
                  else None)
    torch.manual_seed(cfg.seed)
    tokenizer = PromptTokenizer.train((s for phrasings in captions for s in phrasings), cfg.context_length)
    clip = CLIP(tokenizer.vocab_size, images.shape[1], cfg, tokenizer.pad_id, tokenizer.eos_id).to(device)
    ids = torch.from_numpy(phrasing_ids(tokenizer, captions)).to(device)
    phrasings = ids.shape[1]
    data = torch.from_numpy(images).to(device)
    optimizer = torch.optim.Adam(clip.parameters(), lr=cfg.lr)
    order = BatchOrder(len(data), min(cfg.batch_size, len(data)), torch.Generator().manual_seed(cfg.seed))
    pick = torch.Generator().manual_seed(cfg.seed + 1)
    history, window, start = [], 0.0, time.perf_counter()
    clip.train()
    for step in range(1, cfg.steps + 1):
        batch = next(order)
        which = torch.randint(phrasings, (len(batch),), generator=pick)
        loss = clip.loss(to_model_range(data[batch.to(device)]), ids[batch.to(device), which.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window += loss.item()
        if step % log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": window / (log_every if step % log_every == 0 else step % log_every)})
            window = 0.0
    seconds = time.perf_counter() - start
    log.info("text encoder: vocabulary of %d, %d steps in %.1f s, final loss %.3g", tokenizer.vocab_size,
             cfg.steps, seconds, history[-1]["loss"])
    return TextEncoder(tokenizer, clip.eval(), cfg, encoder_digest(cfg, captions, images, pretrained),
                       list(prompts or []), history, seconds, pretrained)


def save_text_encoder(encoder: TextEncoder, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ENCODER_FILE) as tmp:
        torch.save(encoder.state(), tmp)


def load_text_encoder(folder: str | Path, device: torch.device | str = "cpu") -> TextEncoder:
    """The text encoder saved in ``folder`` by :func:`save_text_encoder`."""
    path = Path(folder) / ENCODER_FILE
    if not path.is_file():
        raise StageInputError(f"{path} is missing; a text-conditioned model needs its dataset's text encoder: "
                              "dvc repro text_encoder@<dataset>")
    return TextEncoder.from_state(torch.load(path, map_location=device, weights_only=True), device)
