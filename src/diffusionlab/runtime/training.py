"""The training loop, the same for every model family: data held as a uint8 tensor on the device,
Adam with warm-up, gradient clipping and EMA of the network's weights. The noise process supplies
the per-batch loss terms; its own parameters (VDM's schedule) are trained alongside.

:class:`Trainer` holds everything a step changes (weights, EMA, optimizer, LR schedule, the data
order and every random number generator), so a run resumed from :meth:`Trainer.state_dict` takes
exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config.params import RunConfig
from ..core.process import Process
from ..device import autocast_dtype, make_generator, precision_name
from ..distributed import World, all_mean_, global_rows
from ..errors import TrainingDiverged
from ..nn.ema import make_ema
from ..nn.phema import PowerEMA
from ..nn.networks import Network
from ..tensors import BatchOrder, to_model_range
from ..text import phrasing_ids
from .text_encoding import TextEncoder
from .factory import build_network, build_process, process_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: Network
    ema: Network
    process: Process
    steps: int
    batch_size: int
    seconds: float = 0.0
    """Training time summed over every process that trained this run (resumes included)."""
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: int = 0
    """Batches skipped for a non-finite loss or gradient (``train.skip_nonfinite``)."""
    precision: str = "fp32"
    """The forward pass's arithmetic: bf16 (autocast) or fp32."""

    @property
    def images_per_second(self) -> float:
        return self.steps * self.batch_size / max(self.seconds, 1e-9)


def drop_condition(y: Tensor, null: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    """The condition y (labels [B] or prompts [B, 1 + L, D]) with each row replaced by its ``null`` (the null label,
    the empty prompt) with probability ``rate``: training for classifier-free guidance."""
    drop = torch.rand(len(y), device=y.device, generator=generator) < rate
    return torch.where(drop.reshape(-1, *[1] * (y.dim() - 1)), null, y)


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and every CUDA device's global generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Trainer:
    """One training run of ``cfg`` on uint8 images [N, C, H, W].

    In a ``world`` of several processes each takes its rows of every global batch of
    ``batch_size`` images (the same batches, t and noise as one process would draw), gradients are
    averaged (DistributedDataParallel for the network, an all-reduce for the process's own
    parameters), and every process holds the same weights after each step.
    """

    def __init__(self, cfg: RunConfig, images: np.ndarray, device: torch.device, world: World = World(),
                 labels: np.ndarray | None = None, text: TextEncoder | None = None,
                 captions: list[list[str]] | None = None):
        tc, dc = cfg.train, cfg.data
        self.cfg, self.device, self.world = cfg, device, world
        self.autocast = autocast_dtype(tc.bf16, device)
        """The forward pass's autocast dtype (None: fp32), :func:`~diffusionlab.device.autocast_dtype`."""
        if cfg.model.class_conditional and labels is None:
            raise ValueError(f"{cfg.name} is class-conditional: pass the training labels")
        if cfg.model.text_conditional and (text is None or captions is None):
            raise ValueError(f"{cfg.name} is text-conditioned: pass the text encoder and the training captions")
        self.labels = torch.from_numpy(labels).to(device) if cfg.model.class_conditional else None
        self.text = text if cfg.model.text_conditional else None
        self.caption_ids = (torch.from_numpy(phrasing_ids(text.conditioning_tokenizer, captions)).to(device)
                            if self.text is not None else None)
        """[N, P, L]: the token ids of every phrasing of every training image's caption."""
        self.shard = world.shard(dc.batch_size)
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        self.data = torch.from_numpy(images).to(device)
        self.process = build_process(cfg, device)
        self.process.fit_data(self.data)
        self.model = build_network(cfg, images.shape[1], self.process).to(device)
        if self.text is not None:
            self.model.set_null_text(self.text.condition([""])[0])
        if tc.channels_last is True or (tc.channels_last == "auto" and device.type == "cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        if world.rank:
            torch.manual_seed(tc.seed + world.rank)  # dropout masks differ between processes
        self.ema = make_ema(self.model, tc.ema_decay, tc.ema_warmup)
        self.phema = PowerEMA(self.model, tc.phema_widths) if tc.phema_widths else None
        self.process_parameters = process_parameters(self.process)
        self.parameters = list(self.model.parameters()) + self.process_parameters
        self.optimizer = torch.optim.Adam(self.parameters, lr=tc.lr)
        warmup = max(tc.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.order = BatchOrder(len(self.data), dc.batch_size, torch.Generator().manual_seed(tc.seed))
        self.noise_gen = make_generator(device, tc.seed + 1)
        self.step = 0
        self.seconds = 0.0
        self.skipped = 0
        self.history: list[dict[str, float]] = []
        self.window: dict[str, float] = {}
        self.window_n = 0
        forward: torch.nn.Module = self.model
        if world.size > 1:
            forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward_model = torch.compile(forward) if tc.compile else forward

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on; loadable with ``torch.load(weights_only=True)``."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "process": self.process.state_dict(),
            "process_training": self.process.training_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order": self.order.state_dict(),
            "noise_generator": self.noise_gen.get_state(),
            "rng": rng_states(),
            "history": self.history,
            "window": self.window,
            "window_n": self.window_n,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "phema": self.phema.state_dict() if self.phema else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.process.load_state_dict(state["process"])
        self.process.load_training_state(state["process_training"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.load_state_dict(state["order"])
        self.noise_gen.set_state(state["noise_generator"])
        set_rng_states(state["rng"])
        self.history = list(state["history"])
        self.window, self.window_n, self.skipped = dict(state["window"]), state["window_n"], state["skipped"]
        self.seconds = state["seconds"]
        if self.phema is not None:
            self.phema.load_state_dict(state["phema"])

    def autocasting(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: autocast to :attr:`autocast`, or nothing (fp32)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _nonfinite(self, what: str, value: float) -> None:
        """Stop at once, or skip the batch when ``train.skip_nonfinite`` allows it."""
        if not self.cfg.train.skip_nonfinite:
            raise TrainingDiverged(
                f"step {self.step}: the {what} is {value}; training stopped before the update, so the last "
                "checkpoint written (train.checkpoint_every) holds finite weights. Lower train.lr, raise "
                "train.warmup_steps or set train.grad_clip, or set train.skip_nonfinite: true to skip such batches"
            )
        self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: %s is %s; batch skipped (%d so far)", self.step, what, value, self.skipped)

    def condition(self, batch: Tensor, n: int) -> Tensor | None:
        """The global batch's condition, each row dropped (to the null one) at ``label_dropout``: its labels [n],
        or a random phrasing of each caption through the frozen text encoder [n, 1 + L, D]; None: unconditional."""
        if self.labels is not None:
            y = self.labels[batch]
        elif self.caption_ids is not None:
            ids = self.caption_ids[batch]
            which = torch.randint(ids.shape[1], (n,), device=self.device, generator=self.noise_gen)
            y = self.text.condition_of_ids(ids[torch.arange(n, device=self.device), which])
        else:
            return None
        return drop_condition(y, self.model.null_condition(y), self.cfg.model.label_dropout, self.noise_gen)

    def train_step(self) -> None:
        tc = self.cfg.train
        self.step += 1
        n, rows = global_rows(self.cfg.data.batch_size, self.shard)
        batch = next(self.order).to(self.device)
        x0 = self.data[batch[rows]]
        x0 = to_model_range(x0) if x0.dtype == torch.uint8 else x0  # a latent model's latents are float already
        if self.cfg.data.random_flip:
            flip = (torch.rand(n, device=self.device, generator=self.noise_gen) < 0.5)[rows]
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        model = self.forward_model
        y = self.condition(batch, n)
        if y is not None:
            model = functools.partial(self.forward_model, y=y[rows])
        with self.autocasting():
            terms = self.process.losses_for_batch(model, x0, self.noise_gen, self.shard)
        loss = terms["loss"].float().mean()
        means = torch.stack([v.detach().float().mean() for v in terms.values()])
        all_mean_([means])  # every process sees the global batch's values and takes the same decision
        global_loss = means[list(terms).index("loss")]
        if not torch.isfinite(global_loss):
            return self._nonfinite("loss", global_loss.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_mean_([p.grad for p in self.process_parameters if p.grad is not None])
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        if not torch.isfinite(grad_norm):
            return self._nonfinite("gradient norm", grad_norm.item())
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        if self.phema is not None:
            self.phema.update(self.model, self.step)
        for key, value in [*zip(terms, means), ("grad_norm", grad_norm)]:
            self.window[key] = self.window.get(key, 0.0) + value.item()
        self.window_n += 1

    def _log_row(self, images_per_second: float) -> dict[str, float] | None:
        if self.window_n == 0:
            return None
        row = {"step": float(self.step), **{k: v / self.window_n for k, v in self.window.items()},
               "lr": self.optimizer.param_groups[0]["lr"], "images_per_second": images_per_second,
               **self.process.scalars()}
        self.history.append(row)
        self.window, self.window_n = {}, 0
        return row

    def run(
        self,
        on_log: Callable[[dict[str, float]], None] | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        progress: bool = True,
        on_snapshot: Callable[[Trainer], None] | None = None,
    ) -> TrainResult:
        """Train from the current step to ``train_steps``. Every ``train.log_every`` steps the window's
        mean of every loss term, the gradient norm, the learning rate, the images per second since the
        last log and the process's scalars go to the history and ``on_log``; every
        ``train.checkpoint_every`` steps (and at the end) ``on_checkpoint`` receives the trainer, and every
        ``train.phema_every`` steps (and at the end) ``on_snapshot``, when post-hoc EMAs are tracked."""
        tc, total = self.cfg.train, self.cfg.data.train_steps
        start = time.perf_counter() - self.seconds
        self.model.train()
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.cfg.name}",
                   disable=not progress or not self.world.is_main, mininterval=2.0)
        since, since_step = time.perf_counter(), self.step
        while self.step < total:
            self.train_step()
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == total:
                now = time.perf_counter()
                row = self._log_row(self.cfg.data.batch_size * (self.step - since_step) / max(now - since, 1e-9))
                since, since_step = now, self.step
                if row is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    if on_log:
                        on_log(row)
            if on_snapshot and self.phema and (self.step % tc.phema_every == 0 or self.step == total):
                on_snapshot(self)
            if on_checkpoint and (self.step % tc.checkpoint_every == 0 or self.step == total):
                self.seconds = time.perf_counter() - start
                on_checkpoint(self)
        bar.close()
        self.seconds = time.perf_counter() - start
        self.model.eval()
        self.ema.module.eval()
        return TrainResult(self.model, self.ema.module, self.process, total, self.cfg.data.batch_size, self.seconds,
                           self.history, self.skipped, precision_name(self.autocast))


def train(cfg: RunConfig, images: np.ndarray, device: torch.device,
          on_log: Callable[[dict[str, float]], None] | None = None, progress: bool = True,
          labels: np.ndarray | None = None) -> TrainResult:
    """Train a U-Net from scratch on uint8 images [N, C, H, W] (and their labels [N] for a class-conditional
    model) with the configured model family's loss."""
    return Trainer(cfg, images, device, labels=labels).run(on_log=on_log, progress=progress)
