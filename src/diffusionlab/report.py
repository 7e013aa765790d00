"""The comparison report: every (dataset, model, sampler, steps, backend) result in one table, with
the real-data floor, as Markdown and as a self-contained HTML page (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import pandas as pd  # noqa: E402

from .guidance import network_evaluations  # noqa: E402

FLOOR_MODEL = "real held-out data"
"""Model column of the floor rows: the real held-out split scored against the real training split."""

COLUMNS = {
    "dataset": "dataset", "model": "model", "family": "family", "sampler": "sampler", "steps": "steps",
    "backend": "features", "fid": "FID", "isc_mean": "IS", "kid_mean": "KID", "precision": "precision",
    "recall": "recall", "bpd": "bits/dim", "num_generated": "generated", "num_reference": "reference",
}
"""Result fields shown in the table, and their headings."""


@dataclass
class ModelResult:
    dataset: str
    model: str
    family: str
    metrics: dict
    """The evaluate stage's metrics.json."""
    sweep: pd.DataFrame
    """The evaluate stage's sweep.csv: one row per (steps, backend)."""
    loss: pd.DataFrame
    """The train stage's loss.csv."""
    grid_png: Path


@dataclass
class Results:
    floors: dict[str, dict] = field(default_factory=dict)
    """Per dataset: the reference stage's floor.json."""
    models: list[ModelResult] = field(default_factory=list)


def results_table(results: Results) -> pd.DataFrame:
    """One row per (dataset, model, sampler, steps, backend), the floor rows first within each dataset."""
    rows = []
    for dataset, floor in results.floors.items():
        for backend, metrics in floor.items():
            if isinstance(metrics, dict):
                rows.append({"dataset": dataset, "model": FLOOR_MODEL, "family": "", "sampler": "", "steps": None,
                             "backend": backend, **metrics, "num_generated": floor["num_held_out"]})
    for r in results.models:
        for record in r.sweep.to_dict("records"):
            rows.append({"dataset": r.dataset, "model": r.model, "family": r.family,
                         "sampler": r.metrics["sampler"], **record, "bpd": r.metrics.get("bpd")})
    table = pd.DataFrame(rows)
    for name in COLUMNS:
        if name not in table:
            table[name] = None
    table = table[list(COLUMNS)]
    table["steps"] = table["steps"].astype("Int64")
    return table.rename(columns=COLUMNS)


def main_table(results: Results) -> pd.DataFrame:
    """The rows at each model's main step count (``sample.steps``), and the floor rows."""
    table = results_table(results)
    main_steps = {(r.dataset, r.model): r.metrics["steps"] for r in results.models}
    keep = [row.model == FLOOR_MODEL or main_steps.get((row.dataset, row.model)) == row.steps
            for row in table[["dataset", "model", "steps"]].itertuples()]
    return table[keep].reset_index(drop=True)


def _figure_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def loss_figure(results: Results, dataset: str) -> bytes:
    """Training loss against step, one line per model of ``dataset`` (log scale: the terms differ widely)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results.models:
        if r.dataset == dataset:
            ax.plot(r.loss["step"], r.loss["loss"], label=r.model)
    ax.set(xlabel="training step", ylabel="loss", yscale="log", title=f"{dataset}: training loss")
    ax.legend()
    return _figure_png(fig)


def fid_steps_figure(results: Results, dataset: str) -> bytes:
    """FID against network evaluations per image (the sampling steps; twice as many under guidance
    other than w = 0 or 1), one line per (model, sampler, backend), the floor as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ticks: set[int] = set()
    for r in results.models:
        if r.dataset == dataset:
            for backend, rows in r.sweep.groupby("backend"):
                evaluations = [network_evaluations(int(n), r.metrics.get("guidance")) for n in rows["steps"]]
                ax.plot(evaluations, rows["fid"], marker="o", label=f"{r.model}, {r.metrics.get('sampler', '')} ({backend})")
                ticks |= set(evaluations)
    for backend, metrics in results.floors.get(dataset, {}).items():
        if isinstance(metrics, dict) and "fid" in metrics:
            ax.axhline(metrics["fid"], linestyle="--", color="gray", label=f"real data ({backend})")
    ax.set(xlabel="network evaluations per image", ylabel="FID", xscale="log",
           title=f"{dataset}: FID against network evaluations")
    ax.set_xticks(sorted(ticks), [str(n) for n in sorted(ticks)])
    ax.minorticks_off()
    ax.legend(fontsize="small")
    return _figure_png(fig)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _blank_missing(table: pd.DataFrame) -> pd.DataFrame:
    """Missing values as empty cells: pandas writes a missing integer (the floor's steps) as <NA>."""
    return table.astype(object).where(table.notna(), "")


def _table_markdown(table: pd.DataFrame) -> str:
    return _blank_missing(table).to_markdown(index=False, floatfmt=".4g")


def _table_html(table: pd.DataFrame) -> str:
    return _blank_missing(table).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)


NOTE = ("FID, KID and precision/recall depend on how many images are compared: read a model's numbers only "
        "against rows with the same generated and reference counts, such as the real-data floor above it "
        "(the real held-out split scored against the real training split, what a perfect model would reach).")

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0}
.grids img{width:220px;image-rendering:pixelated}"""


def render_html(results: Results) -> str:
    """A self-contained page: no file or network access is needed to view it."""
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>diffusionlab report</title>',
             f"<style>{CSS}</style></head><body>", "<h1>diffusionlab report</h1>", f"<p>{html.escape(NOTE)}</p>",
             "<h2>Results at each model's sampling steps</h2>", _table_html(main_table(results))]
    for dataset in results.floors:
        parts.append(f"<h2>{html.escape(dataset)}</h2>")
        parts.append(_img(loss_figure(results, dataset), f"{dataset} training loss"))
        parts.append(_img(fid_steps_figure(results, dataset), f"{dataset} FID against sampling steps"))
        parts.append('<div class="grids">')
        for r in results.models:
            if r.dataset == dataset:
                parts.append(f"<figure>{_img(r.grid_png.read_bytes(), f'{dataset}-{r.model} samples')}"
                             f"<figcaption>{html.escape(r.model)} ({html.escape(r.family)})</figcaption></figure>")
        parts.append("</div>")
    parts += ["<h2>Every sampling step count</h2>", _table_html(results_table(results)), "</body></html>"]
    return "\n".join(parts)


def render_markdown(results: Results, grid_root: Path) -> str:
    """The tables in Markdown; sample grids linked relative to ``grid_root`` (the report's folder)."""
    lines = ["# diffusionlab report", "", NOTE, "", "## Results at each model's sampling steps", "",
             _table_markdown(main_table(results)), ""]
    for dataset in results.floors:
        lines += [f"## {dataset}: samples", ""]
        for r in results.models:
            if r.dataset == dataset:
                rel = Path(*[".."] * len(grid_root.parts)) / r.grid_png
                lines.append(f"![{dataset}-{r.model}]({rel.as_posix()})")
        lines.append("")
    lines += ["## Every sampling step count", "", _table_markdown(results_table(results)), ""]
    return "\n".join(lines)
