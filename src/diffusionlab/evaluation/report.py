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

from ..config.sections import DEFAULT_BUDGET  # noqa: E402
from ..sampling.names import network_evaluations  # noqa: E402
from . import restoration  # noqa: E402
from .significance import LOWER_IS_BETTER, spread_of, welch  # noqa: E402

FLOOR_MODEL = "real held-out data"
"""Model column of the floor rows: the real held-out split scored against the real training split."""

SCORE_HEADINGS = {"fid": "FID", "fid_inf": "FID_inf", "isc": "IS", "isc_inf": "IS_inf", "kid": "KID",
                  "precision": "precision", "recall": "recall", "class_accuracy": "class accuracy"}
"""Scores shown as mean ± standard deviation over the draws, and their headings."""
TEST_NAME = "Welch's t-test over the draws"
MONITOR_FILE = "monitor.csv"
"""Beside the train stage's outputs when ``python -m diffusionlab.monitor`` scored the run while it trained."""
MONITOR_COLUMNS = ("step", "monitor_fid", "num_samples", "steps")


@dataclass
class ModelResult:
    dataset: str
    model: str
    family: str
    metrics: dict
    """The evaluate stage's metrics.json."""
    sweep: pd.DataFrame
    """The evaluate stage's sweep.csv: one row per (steps, backend), mean and std over the draws."""
    loss: pd.DataFrame
    """The train stage's loss.csv."""
    grid_png: Path
    guidance: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The evaluate stage's guidance.csv: one row per (guidance, backend); empty for an unconditional model."""
    ema: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The evaluate stage's ema.csv: the default EMA and each rebuilt width per backend; empty without
    ``sample.ema_widths``."""
    monitor: pd.DataFrame | None = None
    """The monitor's monitor.csv (:data:`MONITOR_COLUMNS`) when it scored the training; None otherwise."""
    restoration: pd.DataFrame | None = None
    """The restore stage's summary.csv: one row per (task, method); None when it restored nothing."""
    restoration_prior: str = ""
    restoration_figures: dict[str, Path] = field(default_factory=dict)
    """The restore stage's figure of each task."""
    attributes_png: Path | None = None
    """A text model's grid of the attribute prompts (a row per word, a column per class); None for any other."""


@dataclass
class Results:
    floors: dict[str, dict] = field(default_factory=dict)
    """Per dataset: the reference stage's floor.json."""
    models: list[ModelResult] = field(default_factory=list)
    significance: float = 0.05
    """Level of the test that calls a difference beyond the noise."""
    autoencoders: dict[tuple[str, str], dict] = field(default_factory=dict)
    """Per (dataset, latent model): its autoencoder's scores (its evaluate stage's metrics.json, ``autoencoder``)."""


def task_group(task: str) -> str:
    """Rows compete within a task: every unconditional row together, conditional rows at each w apart."""
    return "unconditional" if task.startswith("unconditional") else task


def _row(dataset: str, model: str, family: str, task: str, sampler: str, steps, backend: str, scores: dict,
         **extra) -> dict:
    row = {"dataset": dataset, "model": model, "family": family, "task": task, "sampler": sampler, "steps": steps,
           "backend": backend, "draws": scores.get("draws")}
    for key in SCORE_HEADINGS:
        row[key], row[f"{key}_std"] = scores.get(key), scores.get(f"{key}_std")
    return {**row, **extra}


def _floor_rows(dataset: str, floor: dict) -> list[dict]:
    return [_row(dataset, FLOOR_MODEL, "", "", "", None, backend, metrics, spread=metrics.get("spread"),
                 resamples=metrics.get("resamples"), num_generated=floor["num_held_out"])
            for backend, metrics in floor.items() if isinstance(metrics, dict)]


def main_rows(results: Results) -> pd.DataFrame:
    """Per dataset: the floor rows, then each model at its sampling steps and guidance scale, and a conditional
    model's unconditional branch (w = 0) when the guidance sweep scored it; one row per feature backend."""
    rows = []
    for dataset, floor in results.floors.items():
        rows += _floor_rows(dataset, floor)
        for r in (m for m in results.models if m.dataset == dataset):
            m = r.metrics
            common = dict(num_generated=m.get("num_generated"), bpd=m.get("bpd"), bpd_ode=m.get("bpd_ode"))
            for backend, scores in m.items():
                if isinstance(scores, dict) and any(key in scores for key in SCORE_HEADINGS):
                    extra = {k: m[k] for k in ("class_accuracy", "class_accuracy_std") if k in m}
                    rows.append(_row(dataset, r.model, r.family, m.get("task", ""), m["sampler"], m["steps"], backend,
                                     {**scores, **extra}, **common))
            for backend, scores in m.get("unconditional", {}).items():
                rows.append(_row(dataset, r.model, r.family, "unconditional (w=0)", m["sampler"], m["steps"], backend,
                                 scores, **common))
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame, level: float, key: str = "fid") -> pd.DataFrame:
    """For each model row, ``key``'s difference from the best model of its dataset, backend and task, and from
    the real-data floor, with Welch's t-test over the draws: columns ``<key>_vs_best``, ``<key>_vs_best_p``,
    ``<key>_vs_floor``, ``<key>_vs_floor_p`` (and ``best``: the row is the best of its group)."""
    table = table.copy()
    for col in (f"{key}_vs_best", f"{key}_vs_best_p", f"{key}_vs_floor", f"{key}_vs_floor_p"):
        table[col] = None
    table["best"] = False
    if table.empty or key not in table:
        return table
    models = table[table.model != FLOOR_MODEL]
    groups = models.assign(group=models.task.map(task_group)).groupby(["dataset", "backend", "group"])
    for _, group in groups:
        if group[key].isna().all():
            continue
        lower = LOWER_IS_BETTER[key]
        best = group[key].idxmin() if lower else group[key].idxmax()
        table.loc[best, "best"] = True
        for i in group.index:
            a, b = spread_of(dict(table.loc[i]), key), spread_of(dict(table.loc[best]), key)
            if i != best and a is not None and b is not None:
                d = welch(a, b, level)
                table.loc[i, [f"{key}_vs_best", f"{key}_vs_best_p"]] = [d.change, d.p]
    for i in models.index:
        row = table.loc[i]
        floor = table[(table.model == FLOOR_MODEL) & (table.dataset == row.dataset) & (table.backend == row.backend)]
        a = spread_of(dict(row), key)
        b = spread_of(dict(floor.iloc[0]), key) if len(floor) else None
        if a is not None and b is not None:
            d = welch(a, b, level)
            table.loc[i, [f"{key}_vs_floor", f"{key}_vs_floor_p"]] = [d.change, d.p]
    return table


def _verdict(change, p, level: float) -> str:
    if change is None or pd.isna(change):
        return ""
    return f"{change:+.3g}, {'beyond' if p < level else 'within'} noise (p={p:.2g})"


def mean_std(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return ""
    return f"{mean:.4g}" if std is None or pd.isna(std) else f"{mean:.4g} ± {std:.2g}"


def shown(table: pd.DataFrame, level: float, with_verdicts: bool = True) -> pd.DataFrame:
    """The table as it is printed: every score as mean ± std, the verdicts in words."""
    out = pd.DataFrame({"dataset": table.dataset, "model": table.model, "family": table.family,
                        "task": table.task, "sampler": table.sampler, "steps": table.steps.astype("Int64"),
                        "features": table.backend})
    if "evaluations" in table:
        out.insert(6, "network evaluations", table.evaluations.astype("Int64"))
    for key, heading in SCORE_HEADINGS.items():
        if key in table and table[key].notna().any():
            out[heading] = [mean_std(m, s) for m, s in zip(table[key], table[f"{key}_std"])]
            if key == "fid" and with_verdicts:
                out["FID vs best"] = ["best" if b else _verdict(c, p, level)
                                      for b, c, p in zip(table.best, table.fid_vs_best, table.fid_vs_best_p)]
                out["FID vs floor"] = [_verdict(c, p, level) for c, p in zip(table.fid_vs_floor, table.fid_vs_floor_p)]
    if "bpd" in table:
        out["bits/dim"] = table.bpd
    if "bpd_ode" in table and table.bpd_ode.notna().any():
        out["bits/dim (ODE)"] = table.bpd_ode
    out["draws × images"] = [_draws(r) for r in table.to_dict("records")]
    return out


def _draws(row: dict) -> str:
    if pd.isna(row.get("num_generated")) or pd.isna(row.get("draws")):
        return ""
    if row.get("spread") == "bootstrap":
        return f"1 × {int(row['num_generated'])} ({int(row['resamples'])} bootstrap resamples)"
    return f"{int(row['draws'])} × {int(row['num_generated'])}"


EMA_NOTE = ("Post-hoc EMA (Karras et al. 2024): each width sigma_rel is rebuilt after training from the snapshots of "
            "train.phema_widths and sampled at the model's sampling setting; 'vs default EMA' is its FID against the "
            "EMA that training kept (train.ema_decay), by Welch's t-test over the draws.")


def ema_table(results: Results, level: float) -> pd.DataFrame:
    """One row per model, backend and EMA (the default, then each rebuilt width): FID ± std, the verdict against the
    default EMA, and which rebuilt width is best (the evaluate stage's ``ema`` in metrics.json)."""
    rows = []
    for r in results.models:
        if r.ema.empty:
            continue
        for backend, group in r.ema.groupby("backend", sort=False):
            best = r.metrics.get("ema", {}).get(backend, {}).get("best_width")
            for _, row in group.sort_values("ema_width", na_position="first").iterrows():
                default = pd.isna(row["ema_width"])
                rows.append({"dataset": r.dataset, "model": r.model, "features": backend,
                             "EMA": "default (train.ema_decay)" if default else f"sigma_rel {row['ema_width']:g}",
                             "FID": mean_std(row["fid"], row.get("fid_std")),
                             "vs default EMA": "" if default else _verdict(row["fid_vs_default"],
                                                                          row["fid_vs_default_p"], level),
                             "best width": "best" if row["ema_width"] == best else ""})
    return pd.DataFrame(rows)


def main_table(results: Results) -> pd.DataFrame:
    """The rows at each model's sampling steps and guidance (and its w = 0 branch), with the verdicts, as shown."""
    return shown(verdicts(main_rows(results), results.significance), results.significance)


def _short(change, p, level: float, near: str) -> str:
    """A verdict in a few characters: ``≈ <near>`` within the noise, else the difference; p in brackets."""
    if change is None or pd.isna(change):
        return ""
    return f"≈ {near} (p={p:.2g})" if p >= level else f"{change:+.3g} (p={p:.2g})"


def summary_table(table: pd.DataFrame, level: float) -> pd.DataFrame:
    """The report's answer, from the rows of :func:`verdicts` (or results.csv's ``main`` rows): one row per
    dataset, task and model, with FID ± std under each feature backend and, under each, the verdict against the
    best model of its task and against the real-data floor."""
    models = table[table.model != FLOOR_MODEL]
    backends = list(dict.fromkeys(models.backend))
    rows = []
    for (dataset, task, model), group in models.groupby(["dataset", "task", "model"], sort=False):
        first = group.iloc[0]
        row = {"dataset": dataset, "task": task, "model": model,
               "sampler": f"{first.sampler} × {int(first.steps)}" if pd.notna(first.steps) else first.sampler}
        for backend in backends:
            found = group[group.backend == backend]
            r = found.iloc[0] if len(found) else None
            row[f"FID {backend}"] = "" if r is None else mean_std(r.fid, r.fid_std)
            row[f"vs best ({backend})"] = "" if r is None else "best" if bool(r.best) else \
                _short(r.fid_vs_best, r.fid_vs_best_p, level, "best")
            row[f"vs floor ({backend})"] = "" if r is None else \
                _short(r.fid_vs_floor, r.fid_vs_floor_p, level, "floor")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {key: i for i, key in enumerate(dict.fromkeys(zip(out.dataset, out.task.map(task_group))))}
    rank = [order[key] for key in zip(out.dataset, out.task.map(task_group))]
    return out.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def summary_lines(table: pd.DataFrame, level: float) -> list[str]:
    """The answer in words, one line per dataset and task: the best model under each backend, the models within
    its noise, and the models within the noise of the real-data floor."""
    models = table[table.model != FLOOR_MODEL]
    models = models.assign(group=models.task.map(task_group),
                           label=[m if t == task_group(t) else f"{m} {t.removeprefix(task_group(t)).strip()}"
                                  for m, t in zip(models.model, models.task)])
    lines = []
    for (dataset, task), group in models.groupby(["dataset", "group"], sort=False):
        parts = []
        for backend, rows in group.groupby("backend", sort=False):
            best = rows[rows.best.astype(bool)].label.tolist()
            if not best:
                continue
            near = rows[(rows.fid_vs_best_p.astype(float) >= level)].label.tolist()
            floor = rows[(rows.fid_vs_floor_p.astype(float) >= level)].label.tolist()
            parts.append(f"{backend}: best {best[0]}" + (f"; within its noise: {', '.join(near)}" if near else "") +
                         f"; at the floor: {', '.join(floor) or 'none'}")
        lines.append(f"- **{dataset}, {task}** ({len(group.label.unique())} models): " + " · ".join(parts))
    return lines


def plain_summary(table: pd.DataFrame, level: float, steps: pd.DataFrame | None = None) -> list[str]:
    """What the run shows, in sentences for a reader new to the scores, from the rows of :func:`verdicts` (or
    results.csv's ``main`` rows) and, when given, every step count's rows (results.csv's ``steps`` rows): per
    dataset and task, whether the models are tied or which is best beyond the noise (and whether the two feature
    networks agree), how far they are from the real-data floor, and whether fewer sampling steps cost quality."""
    models = table[table.model != FLOOR_MODEL]
    models = models.assign(group=models.task.map(task_group))
    backends = list(dict.fromkeys(models.backend))
    under = {1: "the feature network", 2: "both feature networks"}.get(len(backends), "every feature network")
    datasets = list(dict.fromkeys(models.dataset))
    sentences = []
    for dataset in datasets:
        rows = models[models.dataset == dataset]
        floor = table[(table.model == FLOOR_MODEL) & (table.dataset == dataset)].set_index("backend").fid
        where = f"On {dataset}, " if len(datasets) > 1 else ""
        for _, group in rows.groupby("group", sort=False):
            sentences.append(where + _task_sentence(group, backends, under, floor, level))
        if steps is not None and len(steps):
            sentence = _steps_sentence(rows, steps[steps.dataset == dataset], backends, under, level)
            if sentence:
                sentences.append(where + sentence)
    return [s[0].upper() + s[1:] for s in sentences]


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _times(ratios: list[float]) -> str:
    lo, hi = min(ratios), max(ratios)
    fmt = (lambda x: f"{x:.0f}") if lo >= 10 else (lambda x: f"{x:.1f}")
    return f"{fmt(lo)} times" if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)} times"


def _task_phrase(task: str) -> str:
    """``conditional, w=1`` -> ``asked for a class at w = 1``; ``unconditional (w=0)`` -> ``without a class (w = 0)``."""
    if task.startswith("conditional, w="):
        return f"asked for a class at guidance w = {task.removeprefix('conditional, w=')}"
    if task == "unconditional (w=0)":
        return "without a class (w = 0, each model's unconditional branch)"
    return task.replace("w=", "w = ")


def _task_sentence(group: pd.DataFrame, backends: list[str], under: str, floor: pd.Series, level: float) -> str:
    """One task's sentences of :func:`plain_summary`."""
    task = _task_phrase(group.task.iloc[0])
    names = list(dict.fromkeys(group.model))
    by = {b: group[group.backend == b] for b in backends}
    best = {b: rows[rows.best.astype(bool)].model.tolist()[:1] for b, rows in by.items()}
    worse = {b: set(rows[rows.fid_vs_best_p.astype(float) < level].model) for b, rows in by.items()}
    draws, images = int(group.draws.max()), group.num_generated.max()
    noise = f"the noise of {draws} draws of {images:.0f} images" if pd.notna(images) else f"the noise of {draws} draws"
    always = [n for n in names if all(n in w for w in worse.values())]
    if len(names) == 1:
        text = f"{task}, {names[0]} is the only model"
    elif not any(worse.values()):
        text = f"{task}, {_names(names)} are tied: no difference between them exceeds {noise} under {under}"
    else:
        bests = {tuple(v) for v in best.values()}
        text = f"{task}, {best[backends[0]][0]} is best under {under}" if len(bests) == 1 and best[backends[0]] else \
            f"{task}, the feature networks disagree on the best: " + ", ".join(
                f"{v[0]} under {b}" for b, v in best.items() if v)
        text += f"; {_names(always)} {'is' if len(always) == 1 else 'are'} worse beyond {noise} under {under}" \
            if always else f"; no model is worse beyond {noise} under {under}"
    at_floor = [n for n in names if all(len(r := rows[rows.model == n]) and
                                        r.fid_vs_floor_p.astype(float).ge(level).all() for rows in by.values())]
    off_floor = [n for n in names if all(rows[rows.model == n].fid_vs_floor_p.astype(float).lt(level).all()
                                         for rows in by.values())]
    if at_floor == names:
        subject = "It is" if len(names) == 1 else "All are"
        return f"{text}. {subject} as close to the training images as real held-out images are (within the noise " \
               "of the real-data floor)."
    if off_floor == names and all(b in floor.index and floor[b] > 0 for b in backends):
        times = [_times((rows.fid / floor[b]).tolist()) for b, rows in by.items()]
        first = f"{times[0]} that of real held-out images (the floor) under {backends[0]}"
        rest = [f"{t} under {b}" for t, b in zip(times[1:], backends[1:])]
        whose = "Its" if len(names) == 1 else "Their"
        return f"{text}. {whose} FID is {' and '.join([first, *rest])}, beyond the noise."
    return f"{text}. Within the noise of the real-data floor under {under}: " + (
        f"{_names(at_floor)}." if at_floor else "none.")


def _steps_sentence(main: pd.DataFrame, steps: pd.DataFrame, backends: list[str], under: str,
                    level: float) -> str | None:
    """The sampling-steps sentence of :func:`plain_summary`: each model's fewest swept steps against its own."""
    outcomes: dict[tuple[int, int], dict[str, list]] = {}
    for model, rows in main[main.task != "unconditional (w=0)"].groupby("model", sort=False):  # not the w = 0 branch
        own = int(rows.steps.iloc[0])
        swept = steps[(steps.model == model) & (steps.steps < own)]
        if swept.empty:
            continue
        fewest = int(swept.steps.min())
        for b in backends:
            a = swept[(swept.steps == fewest) & (swept.backend == b)]
            ref = steps[(steps.model == model) & (steps.steps == own) & (steps.backend == b)]
            sa, sb = (spread_of(dict(x.iloc[0]), "fid") if len(x) else None for x in (a, ref))
            if sa is None or sb is None:
                continue
            d = welch(sa, sb, level)
            kind = "higher" if d.beyond_noise and d.change > 0 else "lower" if d.beyond_noise else "tied"
            o = outcomes.setdefault((fewest, own), {"higher": [], "lower": [], "tied": [], "ratio": []})
            o[kind].append((model, b))
            o["ratio"].append(sa.mean / sb.mean if sb.mean > 0 else float("nan"))
    parts = []
    for (fewest, own), o in outcomes.items():
        models = list(dict.fromkeys(m for kind in ("higher", "lower", "tied") for m, _ in o[kind]))
        every = "every model's" if len(models) > 1 else f"{models[0]}'s"
        where = f"at {fewest} steps instead of {own}"
        if not o["lower"] and not o["tied"]:
            parts.append(f"fewer sampling steps cost quality: {where}, {every} FID is higher beyond the noise under "
                         f"{under} ({_times(o['ratio'])} as high)")
        elif not o["higher"] and not o["lower"]:
            parts.append(f"sampling {where} changes no FID beyond the noise")
        else:
            found = [f"{_names([m for m, b in o[kind] if b == backend])} under {backend}"
                     for kind in ("higher", "lower") for backend in backends
                     if any(b == backend for _, b in o[kind])]
            kinds = [kind for kind in ("higher", "lower") for backend in backends
                     if any(b == backend for _, b in o[kind])]
            said = "; ".join(f"{kind} for {text}" for kind, text in zip(kinds, found))
            agreed = [m for m in models if all((m, b) in o["higher"] for b in backends)]
            parts.append(f"{where}, FID is {said}, beyond the noise, and within it otherwise: " + (
                f"the feature networks agree for {_names(agreed)} only" if agreed
                else "the feature networks do not agree that fewer steps cost quality"))
    return "; ".join(parts) + "." if parts else None


SUMMARY_NOTE = ("FID is the mean ± standard deviation over the draws, under each feature backend. 'vs best': the "
                "difference from the best model of the same dataset and task, 'vs floor': from the real-data floor "
                "(the held-out images against the training images); ≈ when {test} at level {level:g} finds it "
                "within the noise. A conclusion holds when both backends agree.")


def summary_note(level: float) -> str:
    return SUMMARY_NOTE.format(test=TEST_NAME, level=level)


def results_table(results: Results) -> pd.DataFrame:
    """Every (dataset, model, sampler, steps, backend) row with the numbers behind the verdicts (and the network
    evaluations per image of its steps): results.csv."""
    rows = []
    for dataset, floor in results.floors.items():
        rows += _floor_rows(dataset, floor)
        for r in (m for m in results.models if m.dataset == dataset):
            for record in r.sweep.to_dict("records"):
                rows.append(_row(dataset, r.model, r.family, r.metrics.get("task", ""), r.metrics["sampler"],
                                 record["steps"], record["backend"], record, evaluations=network_evaluations(
                                     int(record["steps"]), r.metrics.get("guidance"), r.metrics["sampler"]),
                                 bpd=r.metrics.get("bpd"),
                                 bpd_ode=r.metrics.get("bpd_ode"),
                                 num_generated=r.metrics.get("num_generated")))
    table = pd.DataFrame(rows)
    table["steps"] = table["steps"].astype("Int64")
    return table


def steps_table(results: Results) -> pd.DataFrame:
    """Every sampling step count of every model, as shown."""
    return shown(results_table(results), results.significance, with_verdicts=False)


def _figure_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def monitor_settings(curve: pd.DataFrame) -> str:
    """How many samples at how many steps the monitor scored each checkpoint with."""
    return f"{curve['num_samples'].iloc[-1]} samples, {curve['steps'].iloc[-1]} steps"


def loss_figure_of(results: Results, dataset: str) -> plt.Figure:
    """Training loss against step, one line per model of ``dataset`` (log scale: the terms differ widely); beside
    it, when the monitor scored some of them while they trained, a second panel of their monitor FID."""
    models = [r for r in results.models if r.dataset == dataset]
    monitored = [r for r in models if r.monitor is not None and not r.monitor.empty]
    if not monitored:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    for r in models:
        ax.plot(r.loss["step"], r.loss["loss"], label=r.model)
    ax.set(xlabel="training step", ylabel="loss", yscale="log", title=f"{dataset}: training loss")
    ax.legend()
    if monitored:
        settings = {monitor_settings(r.monitor) for r in monitored}
        for r in monitored:
            shown = r.model if len(settings) == 1 else f"{r.model} ({monitor_settings(r.monitor)})"
            right.plot(r.monitor["step"], r.monitor["monitor_fid"], marker="o", label=shown)
        common = f"{settings.pop()}; " if len(settings) == 1 else ""
        right.set(xlabel="training step", ylabel="monitor FID", title=f"monitor FID ({common}a trend, not a result)")
        right.legend()
    return fig


def loss_figure(results: Results, dataset: str) -> bytes:
    return _figure_png(loss_figure_of(results, dataset))


def _backends(results: Results, dataset: str) -> list[str]:
    return [b for b, m in results.floors.get(dataset, {}).items() if isinstance(m, dict)]


def _floor_band(ax, floor: dict, key: str) -> None:
    if key in floor:
        mean, std = floor[key], floor.get(f"{key}_std") or 0.0
        ax.axhline(mean, linestyle="--", color="gray", label="real data")
        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15)


def fid_steps_figure(results: Results, dataset: str) -> bytes:
    """FID against network evaluations per image (the sampling steps; twice as many under guidance other than
    w = 0 or 1), one panel per feature backend, one line per model with the standard deviation over the draws
    as error bars; the floor as a dashed line in its band of one standard deviation."""
    backends = _backends(results, dataset)
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.5), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        ticks: set[int] = set()
        for r in (m for m in results.models if m.dataset == dataset):
            rows = r.sweep[r.sweep.backend == backend]
            if "fid" not in rows or rows.empty:
                continue
            evaluations = [network_evaluations(int(n), r.metrics.get("guidance"), r.metrics.get("sampler", ""))
                           for n in rows["steps"]]
            ax.errorbar(evaluations, rows["fid"], yerr=rows.get("fid_std"), marker="o", capsize=3,
                        label=f"{r.model}, {r.metrics.get('sampler', '')}")
            ticks |= set(evaluations)
        _floor_band(ax, results.floors[dataset][backend], "fid")
        ax.set(xlabel="network evaluations per image", ylabel="FID", xscale="log", title=f"{dataset}: {backend} features")
        if ticks:
            ax.set_xticks(sorted(ticks), [str(n) for n in sorted(ticks)])
        ax.minorticks_off()
        ax.legend(fontsize="small")
    return _figure_png(fig)


def guidance_figure(results: Results, dataset: str) -> bytes | None:
    """FID (one panel per backend) and class accuracy against the guidance scale w of the conditional models,
    with the standard deviation over the draws as error bars; None when no model is conditional."""
    conditional = [m for m in results.models if m.dataset == dataset and not m.guidance.empty]
    if not conditional:
        return None
    backends = _backends(results, dataset)
    fig, axes = plt.subplots(1, len(backends) + 1, figsize=(4.5 * (len(backends) + 1), 3.5), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        for r in conditional:
            rows = r.guidance[r.guidance.backend == backend]
            if "fid" in rows:
                ax.errorbar(rows["guidance"], rows["fid"], yerr=rows.get("fid_std"), marker="o", capsize=3, label=r.model)
        _floor_band(ax, results.floors[dataset][backend], "fid")
        ax.set(xlabel="guidance scale w", ylabel="FID", title=f"{dataset}: {backend} features")
        ax.legend(fontsize="small")
    ax = axes[0][-1]
    for r in conditional:
        rows = r.guidance.drop_duplicates("guidance")
        if "class_accuracy" in rows:
            ax.errorbar(rows["guidance"], rows["class_accuracy"], yerr=rows.get("class_accuracy_std"), marker="o",
                        capsize=3, label=r.model)
    ax.set(xlabel="guidance scale w", ylabel="class accuracy", title=f"{dataset}: class asked for")
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


def budgets_of(results: Results, dataset: str) -> list[str]:
    """The budgets the dataset's models ran at (``datasets.<name>.budget``, from their evaluate stages)."""
    return sorted({r.metrics.get("budget", DEFAULT_BUDGET) for r in results.models if r.dataset == dataset})


def dataset_heading(results: Results, dataset: str) -> str:
    """The dataset's name and the budget its models ran at: ``mnist_t10k (budget cpu)``."""
    return f"{dataset} (budget {', '.join(budgets_of(results, dataset)) or DEFAULT_BUDGET})"


def note(results: Results) -> str:
    return (f"Every score is the mean ± standard deviation over independent draws of the generated images (the "
            f"draws × images column). 'FID vs best' and 'FID vs floor' give the difference from the best model of "
            f"the same dataset, features and task, and from the real-data floor (the real held-out split scored "
            f"against the real training split, what a perfect model reaches), and whether {TEST_NAME} at level "
            f"{results.significance:g} calls it beyond the noise. FID, IS and precision/recall depend on how many "
            f"images are compared: read a model's numbers against rows of the same counts, or compare FID_inf "
            f"and IS_inf (Chong & Forsyth 2020: fitted linearly in 1/N over subsets and extrapolated to "
            f"infinitely many images), which do not depend on the count. The floor's spread comes from disjoint "
            f"draws of held-out images when there are enough, otherwise from bootstrap resamples (shown). A "
            f"conditional model is also scored at w = 0, its unconditional branch, which competes with the "
            f"unconditional rows.")


def _best_restorations(restored: list[ModelResult], level: float) -> pd.DataFrame:
    return restoration.best_per_task({f"{r.dataset}-{r.model}": r.restoration for r in restored}, level)


RESTORATION_NOTE = (
    "Held-out images measured once per task (y = A x + σ_y n) and restored by each solver over independent draws of "
    "its randomness: mean ± standard deviation over the draws. pinv is the pseudo-inverse A⁺y and fill the known "
    "pixels with a harmonic fill (deterministic: no spread); truth scores the held-out images themselves, the FID "
    "and class accuracy a perfect restoration reaches at this count. ‖Ax − y‖/√m is the residual per measured "
    "value, to read against σ_y. 'vs best' and 'vs pinv' give Welch's test of each FID against the task's best "
    "solver and the pseudo-inverse: better, worse, or ≈ (within the noise).")


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}.grids{display:flex;flex-wrap:wrap;gap:1em}.grids figure{margin:0}
.grids img{width:220px;image-rendering:pixelated}"""


def render_html(results: Results) -> str:
    """A self-contained page: no file or network access is needed to view it."""
    judged, level = verdicts(main_rows(results), results.significance), results.significance
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>diffusionlab report</title>',
             f"<style>{CSS}</style></head><body>", "<h1>diffusionlab report</h1>", "<h2>Summary</h2>",
             f"<p>{html.escape(' '.join(plain_summary(judged, level, results_table(results))))}</p>", "<ul>"]
    parts += [f"<li>{_html_line(line)}</li>" for line in summary_lines(judged, level)]
    parts += ["</ul>", _table_html(summary_table(judged, level)), f"<p>{html.escape(summary_note(level))}</p>"]
    for dataset in results.floors:
        parts.append(f"<h2>{html.escape(dataset_heading(results, dataset))}: samples</h2>")
        parts.append('<div class="grids">')
        for r in results.models:
            if r.dataset == dataset:
                parts.append(f"<figure>{_img(r.grid_png.read_bytes(), f'{dataset}-{r.model} samples')}"
                             f"<figcaption>{html.escape(r.model)} ({html.escape(r.family)})</figcaption></figure>")
        parts.append("</div>")
    parts += ["<h2>Results at each model's sampling steps</h2>", f"<p>{html.escape(note(results))}</p>",
              _table_html(shown(judged, level))]
    for dataset in results.floors:
        parts.append(f"<h2>{html.escape(dataset_heading(results, dataset))}: training and sampling</h2>")
        parts.append(_img(loss_figure(results, dataset), f"{dataset} training loss"))
        parts.append(_img(fid_steps_figure(results, dataset), f"{dataset} FID against sampling steps"))
        guided = guidance_figure(results, dataset)
        if guided is not None:
            parts.append(_img(guided, f"{dataset} FID and class accuracy against guidance"))
    adherence = adherence_table(results)
    if len(adherence):
        parts += ["<h2>Prompt adherence</h2>", f"<p>{html.escape(ADHERENCE_NOTE)}</p>", _table_html(adherence),
                  '<div class="grids">']
        parts += [f"<figure>{_img(r.attributes_png.read_bytes(), f'{r.dataset}-{r.model} attribute prompts')}"
                  f"<figcaption>{html.escape(r.model)}: a row per word, a column per class</figcaption></figure>"
                  for r in results.models if r.attributes_png is not None]
        parts.append("</div>")
    widths = ema_table(results, level)
    if len(widths):
        parts += ["<h2>Post-hoc EMA widths</h2>", f"<p>{html.escape(EMA_NOTE)}</p>", _table_html(widths)]
    if results.autoencoders:
        parts += ["<h2>Latent autoencoders</h2>", f"<p>{html.escape(AUTOENCODER_NOTE)}</p>",
                  _table_html(autoencoder_table(results))]
    restored = [r for r in results.models if r.restoration is not None]
    if restored:
        parts += ["<h2>Restoration with each model as the prior</h2>", f"<p>{html.escape(RESTORATION_NOTE)}</p>",
                  "<h3>Best solver per task</h3>", _table_html(_best_restorations(restored, results.significance))]
    for r in restored:
        parts += [f"<h3>{html.escape(r.dataset)}-{html.escape(r.model)} ({html.escape(r.restoration_prior)})</h3>",
                  _table_html(restoration.shown(r.restoration, results.significance))]
        parts += [_img(path.read_bytes(), f"{r.dataset}-{r.model} {task}") for task, path in
                  r.restoration_figures.items()]
    parts += ["<h2>Every sampling step count</h2>", _table_html(steps_table(results)), "</body></html>"]
    return "\n".join(parts)


def _html_line(line: str) -> str:
    """A summary line (Markdown bold around its heading) as HTML."""
    head, _, rest = line.removeprefix("- **").partition("**")
    return f"<b>{html.escape(head)}</b>{html.escape(rest)}"


ADHERENCE_NOTE = (
    "How well a text model's samples follow their prompts, mean ± standard deviation over the draws: the CLIP score "
    "of its own prompts under the in-domain CLIP, and for prompts that ask for one word of an attribute ('a thick "
    "7'), the attribute measured on each sample as the captions measure it: r is Pearson's correlation of the "
    "requested value (the median of the class's training images with the word) and the measured one, gain the "
    "fraction of the requested departure from the class's median that the samples reach (1: as far as the data, "
    "0: the word is ignored), error the mean absolute difference; held out: the gain of the combinations kept out "
    "of training. The real-data row scores training images with the word each prompt asks: the adherence of a model "
    "that follows its prompts as the data do.")


def adherence_table(results: Results) -> pd.DataFrame:
    """One row per text model: its CLIP score, class accuracy and each attribute's r, gain (seen and held out) and
    error, mean ± std over the draws."""
    rows, real = [], {}
    for r in results.models:
        m, scores = r.metrics, r.metrics.get("attributes")
        if scores is None and "clip_score" not in m:
            continue
        row = {"dataset": r.dataset, "model": r.model}
        for key, label in (("clip_score", "CLIP score"), ("class_accuracy", "class accuracy")):
            if key in m:
                row[label] = _pm(m[key], m.get(f"{key}_std"))
        rows.append({**row, **_adherence_cells(scores or {})})
        if scores and "real" in scores:
            real.setdefault(r.dataset, {"dataset": r.dataset, "model": REAL_DATA, **_adherence_cells(scores["real"])})
    return pd.DataFrame(rows + list(real.values()))


REAL_DATA = "real data (training images with the word)"


def _adherence_cells(scores: dict) -> dict:
    cells = {key.replace("_", " "): _pm(scores[key], scores.get(f"{key}_std"))
             for key in scores if isinstance(scores[key], float) and not key.endswith("_std")}
    if scores.get("held_out"):
        cells["held out"] = ", ".join(scores["held_out"])
    return cells


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3g}" if std is None else f"{mean:.3g} ± {std:.2g}"


AUTOENCODER_NOTE = ("The reconstructions of the held-out images, scored as the real-data floor is: the best FID a "
                    "latent model of this autoencoder can reach. A latent model's samples are its decoded latents.")


def autoencoder_table(results: Results) -> pd.DataFrame:
    """One row per latent model: its autoencoder's f, latent, PSNR, and reconstruction FID ± std beside the
    real-data floor under each backend."""
    rows = []
    for (dataset, model), m in results.autoencoders.items():
        row = {"dataset": dataset, "model": model, "f": m["factor"], "latent channels": m["latent_channels"],
               "latent scale": f"{m['latent_scale']:.3g}", "PSNR dB": f"{m['psnr']:.2f}", "SSIM": f"{m['ssim']:.3f}"}
        floor = results.floors.get(dataset, {})
        for backend in [k for k in m if isinstance(m[k], dict) and "fid" in m[k]]:
            row[f"FID {backend}"] = f"{m[backend]['fid']:.3g} ± {m[backend]['fid_std']:.2g}"
            if backend in floor:
                row[f"floor {backend}"] = f"{floor[backend]['fid']:.3g} ± {floor[backend]['fid_std']:.2g}"
        rows.append(row)
    return pd.DataFrame(rows)


def render_markdown(results: Results, grid_root: Path) -> str:
    """The tables in Markdown; sample grids linked relative to ``grid_root`` (the report's folder)."""
    judged, level = verdicts(main_rows(results), results.significance), results.significance
    plain = " ".join(plain_summary(judged, level, results_table(results)))
    lines = ["# diffusionlab report", "", "## Summary", "", plain, "", *summary_lines(judged, level), "",
             _table_markdown(summary_table(judged, level)), "", summary_note(level), ""]
    for dataset in results.floors:
        lines += [f"## {dataset_heading(results, dataset)}: samples", ""]
        for r in results.models:
            if r.dataset == dataset:
                rel = Path(*[".."] * len(grid_root.parts)) / r.grid_png
                lines.append(f"![{dataset}-{r.model}]({rel.as_posix()})")
        lines.append("")
    lines += ["## Results at each model's sampling steps", "", note(results), "", _table_markdown(shown(judged, level)),
              ""]
    adherence = adherence_table(results)
    if len(adherence):
        lines += ["## Prompt adherence", "", ADHERENCE_NOTE, "", _table_markdown(adherence), ""]
        for r in [r for r in results.models if r.attributes_png is not None]:
            rel = Path(*[".."] * len(grid_root.parts)) / r.attributes_png
            lines.append(f"![{r.dataset}-{r.model} attribute prompts, a row per word]({rel.as_posix()})")
        lines.append("")
    widths = ema_table(results, level)
    if len(widths):
        lines += ["## Post-hoc EMA widths", "", EMA_NOTE, "", _table_markdown(widths), ""]
    if results.autoencoders:
        lines += ["## Latent autoencoders", "", AUTOENCODER_NOTE, "", _table_markdown(autoencoder_table(results)), ""]
    restored = [r for r in results.models if r.restoration is not None]
    if restored:
        lines += ["## Restoration with each model as the prior", "", RESTORATION_NOTE, "", "### Best solver per task", "",
                  _table_markdown(_best_restorations(restored, results.significance)), ""]
    for r in restored:
        lines += [f"### {r.dataset}-{r.model} ({r.restoration_prior})", "",
                  _table_markdown(restoration.shown(r.restoration, results.significance)), ""]
        for task, path in r.restoration_figures.items():
            rel = Path(*[".."] * len(grid_root.parts)) / path
            lines.append(f"![{r.dataset}-{r.model} {task}]({rel.as_posix()})")
        lines.append("")
    lines += ["## Every sampling step count", "", _table_markdown(steps_table(results)), ""]
    return "\n".join(lines)
