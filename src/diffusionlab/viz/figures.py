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

from ..core.process import Process  # noqa: E402
from ..io import atomic_path  # noqa: E402
from .images import tile  # noqa: E402


def _to_display(x: Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> [H, W] or [H, W, 3] in [0, 1] for imshow."""
    x = ((x.float() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _save_figure(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def forward_process_figure(image: Tensor, process: Process, path: str | Path, columns: int = 6, seed: int = 0) -> None:
    """One image [C, H, W] in [-1, 1] noised by the model's own process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)
    at ``columns`` times from the cleanest to the noisiest, evenly spaced in log-SNR for a discrete-time
    process and in t for a continuous-time one (:meth:`Process.likelihood_grid`), each panel titled with its
    time and signal-to-noise ratio SNR = alpha^2 / sigma^2 (one noise draw throughout)."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    grid = process.likelihood_grid(columns - 1)
    times, alphas, sigmas = grid.times[::-1], grid.alphas[::-1], grid.sigmas[::-1]
    fig, axes = plt.subplots(1, len(times), figsize=(1.5 * len(times), 1.9), squeeze=False)
    for col, (t, alpha, sigma) in enumerate(zip(times, alphas, sigmas)):
        ax = axes[0][col]
        ax.imshow(_to_display(alpha * image + sigma * noise), cmap="gray", vmin=0, vmax=1)
        snr = alpha**2 / sigma**2 if sigma > 0 else float("inf")
        ax.set_title(f"{process.time_label(t)}\nSNR={snr:.2g}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("forward process q(x_t | x_0)", fontsize=10)
    _save_figure(fig, path)


def reverse_process_figure(labels: list[str], x_t: list[Tensor], pred_x0: list[Tensor], path: str | Path,
                           samples: int = 4) -> None:
    """For ``samples`` samples, a row of x_t and a row of the predicted x_0 at each recorded time, the columns
    titled with ``labels`` (the process's :meth:`Process.time_label` of each)."""
    samples = min(samples, x_t[0].shape[0])
    fig, axes = plt.subplots(2 * samples, len(labels), figsize=(1.2 * len(labels), 1.25 * 2 * samples), squeeze=False)
    for k in range(samples):
        for col, label in enumerate(labels):
            for r, (what, frames) in enumerate((("x_t", x_t), ("pred x_0", pred_x0))):
                ax = axes[2 * k + r][col]
                ax.imshow(_to_display(frames[col][k]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0 and r == 0:
                    ax.set_title(label, fontsize=8)
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
