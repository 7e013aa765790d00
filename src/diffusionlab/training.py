"""The training loop, the same for every model family: data held as a uint8 tensor on the device,
Adam with warm-up, gradient clipping and EMA of the network's weights. The noise process supplies
the per-batch loss terms; its own parameters (VDM's schedule) are trained alongside."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .config import RunConfig
from .device import make_generator
from .ema import make_ema
from .factory import Process, build_network, build_process, process_parameters
from .tensors import batches, to_model_range
from .unet import UNet


@dataclass
class TrainResult:
    model: UNet
    ema: UNet
    process: Process
    steps: int
    batch_size: int
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.steps * self.batch_size / max(self.seconds, 1e-9)


def train(
    cfg: RunConfig,
    images: np.ndarray,
    device: torch.device,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a U-Net on uint8 images [N, C, H, W] with the loss of the configured model family.

    Every ``train.log_every`` steps the window's mean of every loss term, the gradient norm, the
    learning rate and the process's scalars (VDM's gamma_0, gamma_1) are appended to the history
    and passed to ``on_log``.
    """
    tc, dc = cfg.train, cfg.data
    torch.manual_seed(tc.seed)
    data = torch.from_numpy(images).to(device)
    process = build_process(cfg, device)
    model = build_network(cfg, images.shape[1], process).to(device)
    ema = make_ema(model, tc.ema_decay)
    parameters = list(model.parameters()) + process_parameters(process)
    optimizer = torch.optim.Adam(parameters, lr=tc.lr)
    warmup = max(tc.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    index_gen = torch.Generator().manual_seed(tc.seed)
    noise_gen = make_generator(device, tc.seed + 1)
    order = batches(len(data), dc.batch_size, index_gen)

    result = TrainResult(model, ema.module, process, dc.train_steps, dc.batch_size)
    window: dict[str, float] = {}
    window_n = 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, dc.train_steps + 1), desc=f"train {cfg.name}", disable=not progress, mininterval=2.0)
    for step in bar:
        x0 = to_model_range(data[next(order).to(device)])
        if dc.random_flip:
            flip = torch.rand(x0.shape[0], device=device, generator=noise_gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        terms = process.losses_for_batch(model, x0, noise_gen)
        loss = terms["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        for key, value in [*((k, v.detach().mean()) for k, v in terms.items()), ("grad_norm", grad_norm)]:
            window[key] = window.get(key, 0.0) + value.item()
        window_n += 1
        if step % tc.log_every == 0 or step == dc.train_steps:
            row = {"step": float(step), **{k: v / window_n for k, v in window.items()},
                   "lr": optimizer.param_groups[0]["lr"], **process.scalars()}
            result.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_log:
                on_log(row)
            window, window_n = {}, 0
    result.seconds = time.perf_counter() - start
    model.eval()
    ema.module.eval()
    return result
