"""Figures of the forward and reverse processes, inpainting and round trips (PNG), and the
denoising animation (GIF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from .images import tile  # noqa: E402
from .io import atomic_path  # noqa: E402
from .schedules import make_betas  # noqa: E402


def _to_display(x: Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> [H, W] or [H, W, 3] in [0, 1] for imshow."""
    x = ((x.float() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _save_figure(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def schedule_alpha_bars(timesteps: int) -> dict[str, np.ndarray]:
    """alpha_bar_t of the linear (Ho et al.) and cosine (Nichol & Dhariwal) schedules with T steps."""
    return {name: np.cumprod(1 - make_betas(name, timesteps)) for name in ("linear", "cosine")}


def forward_process_figure(image: Tensor, timesteps: int, steps: list[int], path: str | Path, seed: int = 0) -> None:
    """One image [C, H, W] in [-1, 1] noised to each of ``steps`` (columns) under the linear and the cosine
    schedule (rows, same noise draw), each panel titled with t and its signal-to-noise ratio
    SNR = alpha_bar / (1 - alpha_bar)."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    schedules = schedule_alpha_bars(timesteps)
    fig, axes = plt.subplots(len(schedules), len(steps), figsize=(1.5 * len(steps), 1.9 * len(schedules)),
                             squeeze=False)
    for row, (name, abar) in enumerate(schedules.items()):
        for col, t in enumerate(steps):
            a = float(abar[t])
            ax = axes[row][col]
            ax.imshow(_to_display(a**0.5 * image + (1 - a) ** 0.5 * noise), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"t={t + 1}\nSNR={a / (1 - a):.2g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=10)
    fig.suptitle(f"forward process q(x_t | x_0), T = {timesteps}", fontsize=10)
    _save_figure(fig, path)


def reverse_process_figure(steps: list, x_t: list[Tensor], pred_x0: list[Tensor], path: str | Path,
                           samples: int = 4) -> None:
    """For ``samples`` samples, a row of x_t and a row of the predicted x_0 at each recorded step (discrete
    steps titled 1..T as in the papers, continuous times in [0, 1])."""
    samples = min(samples, x_t[0].shape[0])
    fig, axes = plt.subplots(2 * samples, len(steps), figsize=(1.2 * len(steps), 1.25 * 2 * samples), squeeze=False)
    for k in range(samples):
        for col, t in enumerate(steps):
            for r, (what, frames) in enumerate((("x_t", x_t), ("pred x_0", pred_x0))):
                ax = axes[2 * k + r][col]
                ax.imshow(_to_display(frames[col][k]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0 and r == 0:
                    ax.set_title(f"t={t:.3g}" if isinstance(t, float) else f"t={t + 1}", fontsize=8)
                if col == 0:
                    ax.set_ylabel(what, fontsize=8)
    fig.suptitle("reverse process: x_t and the predicted x_0", fontsize=10)
    _save_figure(fig, path)


def denoising_gif(frames: list[Tensor], path: str | Path, samples: int = 16, seconds: float = 3.0) -> None:
    """An animation of x_t over the recorded steps for a grid of ``samples`` samples, holding the last frame."""
    images = []
    for frame in frames:
        tiles = ((frame[:samples].float() + 1) / 2).clamp(0, 1)
        grid = tile(tiles, int(np.ceil(np.sqrt(len(tiles)))))
        images.append(Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    durations = [int(1000 * seconds / len(images))] * (len(images) - 1) + [1500]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)


def panels_figure(columns: dict[str, Tensor], path: str | Path, title: str) -> None:
    """Side-by-side columns of images (each [B, C, H, W] in [-1, 1]), one row per image, titled by column."""
    rows = next(iter(columns.values())).shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.3 * rows), squeeze=False)
    for col, (name, images) in enumerate(columns.items()):
        for r in range(rows):
            ax = axes[r][col]
            ax.imshow(_to_display(images[r]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save_figure(fig, path)


def loss_curve_figure(history: list[dict[str, float]], path: str | Path, title: str) -> None:
    """The training loss against step (log scale when it stays positive)."""
    steps = [row["step"] for row in history]
    loss = [row["loss"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss)
    ax.set(xlabel="training step", ylabel="loss", title=title, yscale="log" if min(loss) > 0 else "linear")
    _save_figure(fig, path)
