"""The training loop: data held as a uint8 tensor on the device, Adam with warm-up, clipping and EMA."""

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
from .factory import build_diffusion, build_network
from .tensors import batches, to_model_range
from .unet import UNet


@dataclass
class TrainResult:
    model: UNet
    ema: UNet
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
    """Train an epsilon-prediction U-Net on uint8 images [N, C, H, W] with L_simple.

    Every ``train.log_every`` steps the mean loss of the window, the learning rate and the
    gradient norm are appended to the history and passed to ``on_log``.
    """
    tc, dc = cfg.train, cfg.data
    torch.manual_seed(tc.seed)
    data = torch.from_numpy(images).to(device)
    model = build_network(cfg, channels=images.shape[1]).to(device)
    ema = make_ema(model, tc.ema_decay)
    diffusion = build_diffusion(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    warmup = max(tc.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    index_gen = torch.Generator().manual_seed(tc.seed)
    noise_gen = make_generator(device, tc.seed + 1)
    order = batches(len(data), dc.batch_size, index_gen)

    result = TrainResult(model, ema.module, dc.train_steps, dc.batch_size)
    window_loss, window_grad, window_n = 0.0, 0.0, 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(1, dc.train_steps + 1), desc=f"train {cfg.name}", disable=not progress, mininterval=2.0)
    for step in bar:
        x0 = to_model_range(data[next(order).to(device)])
        if dc.random_flip:
            flip = torch.rand(x0.shape[0], device=device, generator=noise_gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), device=device, generator=noise_gen)
        noise = torch.randn(x0.shape, device=device, generator=noise_gen)
        loss = diffusion.training_losses(model, x0, t, noise)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        window_loss += loss.item()
        window_grad += grad_norm.item()
        window_n += 1
        if step % tc.log_every == 0 or step == dc.train_steps:
            row = {
                "step": float(step),
                "loss": window_loss / window_n,
                "grad_norm": window_grad / window_n,
                "lr": optimizer.param_groups[0]["lr"],
            }
            result.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_log:
                on_log(row)
            window_loss, window_grad, window_n = 0.0, 0.0, 0
    result.seconds = time.perf_counter() - start
    model.eval()
    ema.module.eval()
    return result
