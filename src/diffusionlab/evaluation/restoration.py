"""Scores of restorations against the truth, and the restoration table with its tests over draws.

PSNR and SSIM come from torchmetrics (images in [0, 1], SSIM with its default 11-pixel Gaussian window, reduced
to 3 or 5 pixels on images too small for it), per image and then averaged over a draw. Every score of a method is
the mean and standard deviation over ``restore.draws`` draws of its randomness on the same measurements; a
deterministic baseline has the same value in every draw (std 0). Each method of a task is compared by Welch's
test with the best diffusion solver of the task and with the pseudo-inverse baseline.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .significance import Spread, welch

SCORES = ("psnr", "ssim", "consistency", "class_accuracy", "seconds_per_image", "evaluations")
"""Per-draw scores besides FID (``fid_<backend>``)."""
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "class_accuracy": True}
TRUTH = "truth"
"""Method name of the rows that score the held-out images themselves (FID and class accuracy at this count)."""
BASELINE = "pinv"


def psnr_ssim(restored: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over the images (uint8 [N, C, H, W]), each computed per image."""
    import torch  # here: the report reads the restoration tables without torch
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, t = (torch.as_tensor(images, dtype=torch.float64) / 255.0 for images in (restored, truth))
    psnr = peak_signal_noise_ratio(x, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    kernel = min(11, (min(x.shape[-2:]) // 2) * 2 - 1)
    ssim = structural_similarity_index_measure(x, t, data_range=1.0, reduction="none", kernel_size=kernel,
                                               sigma=1.5 * kernel / 11)
    return float(psnr.mean()), float(ssim.mean())


def fid_columns(table: pd.DataFrame) -> list[str]:
    """``fid_<backend>`` of each backend scored."""
    return sorted(c for c in table.columns if re.fullmatch(r"fid_[a-z0-9]+", c))


def summary(per_draw: pd.DataFrame, level: float) -> pd.DataFrame:
    """One row per (task, method) of ``per_draw`` (one row per task, method and draw): each score's mean and std
    over the draws, and for FID under each backend, PSNR, SSIM and class accuracy the change and Welch's p against
    the task's best diffusion solver (``_vs_best``) and the pseudo-inverse (``_vs_pinv``)."""
    keys = [k for k in (*SCORES, *fid_columns(per_draw)) if k in per_draw]
    rows = []
    for (task, method), group in per_draw.groupby(["task", "method"], sort=False):
        row = {"task": task, "method": method, "kind": group["kind"].iloc[0], "draws": len(group),
               "images": int(group["images"].iloc[0]), "sigma_y": float(group["sigma_y"].iloc[0])}
        for key in keys:
            values = group[key].dropna().to_numpy(float)
            if len(values):
                spread = float(values.std(ddof=1)) if len(values) > 1 and np.isfinite(values).all() else 0.0
                row[key], row[f"{key}_std"] = float(values.mean()), spread
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in [k for k in keys if k.startswith("fid_") or k in HIGHER_IS_BETTER]:
        _compare(table, key, not HIGHER_IS_BETTER.get(key, False), level)
    return table


def _spread(row: pd.Series, key: str) -> Spread | None:
    if pd.isna(row.get(key)):
        return None
    n = int(row["draws"])
    return Spread(float(row[key]), float(row.get(f"{key}_std", 0.0) or 0.0), n, max(n - 1, 1))


def _compare(table: pd.DataFrame, key: str, lower: bool, level: float) -> None:
    """Add ``<key>_vs_best``, ``<key>_vs_best_p``, ``<key>_vs_pinv`` and ``<key>_vs_pinv_p`` to every row."""
    for column in ("vs_best", "vs_best_p", "vs_pinv", "vs_pinv_p"):
        table[f"{key}_{column}"] = np.nan
    table[f"{key}_best"] = False
    for task, rows in table.groupby("task", sort=False):
        solvers = rows[(rows.kind == "solver") & rows[key].notna()] if key in rows else rows.iloc[:0]
        if solvers.empty:
            continue
        best = solvers[key].idxmin() if lower else solvers[key].idxmax()
        table.loc[best, f"{key}_best"] = True
        baseline = rows[rows.method == BASELINE]
        for index, row in rows.iterrows():
            mine = _spread(row, key)
            if mine is None:
                continue
            for column, other in (("vs_best", table.loc[best]), ("vs_pinv", baseline.iloc[0] if len(baseline) else None)):
                theirs = None if other is None else _spread(other, key)
                if theirs is None or other.name == index:
                    continue
                diff = welch(mine, theirs, level)
                table.loc[index, f"{key}_{column}"], table.loc[index, f"{key}_{column}_p"] = diff.change, diff.p


def verdict(change: float, p: float, level: float, lower: bool) -> str:
    """``better`` or ``worse`` beyond the noise, or ``≈`` (within it)."""
    if pd.isna(change):
        return ""
    if p >= level:
        return "≈"
    return "better" if (change < 0) == lower else "worse"


def _mean_std(mean, std, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return ""
    spread = std is not None and not pd.isna(std) and abs(std) > 1e-9 * max(1.0, abs(mean))
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if spread else f"{mean:.{digits}f}"


def shown(table: pd.DataFrame, level: float) -> pd.DataFrame:
    """The restoration table as printed: scores as mean ± std, the first backend's FID verdicts in words."""
    fids = fid_columns(table)
    out = pd.DataFrame({"task": table.task, "σ_y": table.sigma_y, "method": table.method})
    out["evaluations"] = [("" if pd.isna(v) else f"{v:.0f}") for v in table.get("evaluations", np.nan)]
    out["s / image"] = [_mean_std(m, s, 4) for m, s in zip(table.get("seconds_per_image"),
                                                             table.get("seconds_per_image_std"))]
    for key, heading, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
        out[heading] = [_mean_std(m, s, digits) for m, s in zip(table[key], table[f"{key}_std"])]
    out["‖Ax − y‖/√m"] = [("" if pd.isna(v) else f"{v:.2e}") for v in table["consistency"]]
    for key in fids:
        out[f"FID ({key[4:]})"] = [_mean_std(m, s, 3) for m, s in zip(table[key], table[f"{key}_std"])]
    if "class_accuracy" in table:
        out["class accuracy"] = [_mean_std(m, s, 3) for m, s in zip(table.class_accuracy, table.class_accuracy_std)]
    for key in fids:
        out[f"FID ({key[4:]}) vs best"] = ["best" if b else verdict(c, p, level, True)
                                          for b, c, p in zip(table[f"{key}_best"], table[f"{key}_vs_best"],
                                                             table[f"{key}_vs_best_p"])]
        out[f"FID ({key[4:]}) vs pinv"] = [verdict(c, p, level, True)
                                          for c, p in zip(table[f"{key}_vs_pinv"], table[f"{key}_vs_pinv_p"])]
    return out


def best_per_task(tables: dict[str, pd.DataFrame], level: float) -> pd.DataFrame:
    """One row per (model, task) of the summaries ``tables`` (keyed by model): under each backend the solver with the
    lowest FID and Welch's verdict against the pseudo-inverse, the highest PSNR among solvers and baselines, and the
    class accuracy of the pseudo-inverse, of the most accurate solver and of the truth."""
    rows = []
    for model, table in tables.items():
        for task, g in table.groupby("task", sort=False):
            row = {"model": model, "task": task, "σ_y": g.sigma_y.iloc[0]}
            pinv = g[g.method == BASELINE].iloc[0]
            for key in fid_columns(g):
                best = g[g[f"{key}_best"].astype(bool)].iloc[0]
                name = key[4:]
                row[f"best FID ({name})"] = f"{best.method} {_mean_std(best[key], best[f'{key}_std'], 2)}"
                row[f"pinv FID ({name})"] = f"{pinv[key]:.2f}"
                row[f"best vs pinv ({name})"] = (f"{verdict(best[f'{key}_vs_pinv'], best[f'{key}_vs_pinv_p'], level, True)}"
                                                 f" (p = {best[f'{key}_vs_pinv_p']:.1g})")
            scored = g[g.kind != "truth"].sort_values("psnr", ascending=False)
            row["best PSNR (dB)"] = f"{scored.method.iloc[0]} {scored.psnr.iloc[0]:.2f}"
            if "class_accuracy" in g:
                solver = g[g.kind == "solver"].sort_values("class_accuracy", ascending=False).iloc[0]
                truth = g[g.kind == "truth"]

                def acc(r: pd.Series) -> str:
                    return _mean_std(r.class_accuracy, r.get("class_accuracy_std"), 2)

                row["class accuracy: pinv / best solver / truth"] = (
                    f"{acc(pinv)} / {solver.method} {acc(solver)} / {acc(truth.iloc[0]) if len(truth) else ''}")
            rows.append(row)
    return pd.DataFrame(rows)
