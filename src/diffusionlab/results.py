"""The results blocks of README.md and docs/results.md, generated from a run's outputs so that no number in
them is typed by hand or goes stale.

    make run                               # times dvc repro: outputs/run.json (commit, date, machine, seconds)
    python -m diffusionlab.results         # record the run in docs/data/default-run.json, write the blocks
                                           # and the figure docs/figures/default-run.png
    python -m diffusionlab.results check   # the blocks agree with the record (the test suite runs this)

The block is the summary that leads the report (:func:`diffusionlab.evaluation.report.summary_table`), read
from ``outputs/report/results.csv``, stamped with the commit, date, machine and time of the run. A run other
than the default one is recorded under a name (``--name mnist-cpu``): docs/data/<name>-run.json, the figure
docs/figures/<name>-run.png and the block between ``<!-- results:<name>:start -->`` and its end marker in
docs/results.md, with a table of each model's recipe, class accuracy, bits/dim and time, and one of each stage's
time and peak memory (from the output ``time`` keeps in ``outputs/run.log``):

    python -m diffusionlab.results time -- dvc exp run -S datasets.mnist_t10k.budget=cpu ...
    python -m diffusionlab.results --name mnist-cpu
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from . import paths
from .config.sections import DEFAULT_BUDGET, EvaluateConfig, PipelineConfig
from .device import cpu_name
from .errors import EXPECTED_ERRORS, StageInputError
from .evaluation.report import FLOOR_MODEL, mean_std, plain_summary, summary_lines, summary_note, summary_table
from .io import atomic_path, read_json, write_json
from .pipeline.cli import FINISHED_LINE
from .validation import View, read_yaml, validate

RUN_FILE = paths.OUTPUTS / "run.json"
"""Written by ``make run``: the commit, date, machine and wall time of its ``dvc repro``."""
RUN_LOG = paths.OUTPUTS / "run.log"
"""The output of the timed command, beside its record: where a named record reads each stage's time and memory."""
RECORD = Path("docs/data/default-run.json")
"""What the blocks are rendered from: the summary of the run's report and the run's stamp."""
FIGURE = Path("docs/figures/default-run.png")
BLOCK_FILES = (Path("README.md"), Path("docs/results.md"))
START = "<!-- results:start -->"
END = "<!-- results:end -->"
COMMAND = "python -m diffusionlab.results"
DEFAULT_RUN = "default"


def record_path(name: str = DEFAULT_RUN) -> Path:
    return RECORD if name == DEFAULT_RUN else RECORD.with_name(f"{name}-run.json")


def figure_path(name: str = DEFAULT_RUN) -> Path:
    return FIGURE if name == DEFAULT_RUN else FIGURE.with_name(f"{name}-run.png")


def markers(name: str = DEFAULT_RUN) -> tuple[str, str]:
    return (START, END) if name == DEFAULT_RUN else (f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->")


def block_files(name: str = DEFAULT_RUN) -> tuple[Path, ...]:
    """The files holding the run's block: the README and the results page for the default run, the results page
    for a named one."""
    return BLOCK_FILES if name == DEFAULT_RUN else (Path("docs/results.md"),)


def recorded_runs(root: Path = Path(".")) -> list[str]:
    """The names of the runs recorded in ``root``'s docs/data, the default one first."""
    named = sorted(p.name.removesuffix("-run.json") for p in (root / RECORD.parent).glob("*-run.json")
                   if p.name != RECORD.name)
    return [DEFAULT_RUN, *named]


class ResultsParams(View):
    """What the block reads of params.yaml: the datasets and models of the run, and the test's level."""

    pipeline: PipelineConfig = PipelineConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def git_commit(root: Path) -> str:
    """The short commit of ``root``, with ``+changes`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """The CPU, its cores and the GPU, if any, in a few words."""
    gpu = "no GPU"
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30)
        names = [n.strip() for n in found.stdout.splitlines() if n.strip()]
        if found.returncode == 0 and names:
            gpu = f"{len(names)} × {names[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{cpu_name()} ({os.cpu_count()} cores), {gpu}"


def timed(command: list[str], out: Path = RUN_FILE, root: Path = Path(".")) -> int:
    """Run ``command`` with its output passed through and kept and, when it succeeds, write its wall time with
    the commit, date and machine to ``out`` and its output beside it (:data:`RUN_LOG`); a failed command's output
    stays in ``run.log.partial``."""
    log_path = out.with_name(RUN_LOG.name)
    partial = log_path.with_name(log_path.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the stages' lines in the order they were written
    with partial.open("wb") as log, \
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        while chunk := proc.stdout.read1(1 << 16):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            log.write(chunk)
    if proc.returncode != 0:
        return proc.returncode
    os.replace(partial, log_path)
    write_json(out, {"command": " ".join(command), "seconds": round(time.monotonic() - start, 1),
                     "commit": git_commit(root), "date": datetime.date.today().isoformat(), "machine": machine()})
    return 0


def stage_times(log: str) -> list[dict]:
    """Each stage's closing line in a run's output (:data:`~diffusionlab.pipeline.cli.FINISHED_LINE`): its name,
    seconds and peak memory, in the order they ran."""
    rows = [{"stage": m[1], "seconds": float(m[2]), "peak MiB": int(m[3]) if m[3] else None,
             "peak GPU MiB": int(m[4]) if m[4] else None} for m in FINISHED_LINE.finditer(log)]
    if not any(row["peak GPU MiB"] for row in rows):
        for row in rows:
            del row["peak GPU MiB"]
    return rows


def model_details(root: Path, datasets: list[str], models: list[str]) -> list[dict]:
    """Per (dataset, model): its budget and recipe (what it was trained with), class accuracy at the sampling
    guidance, bits/dim (the bound and through the ODE), training time and images/s, and the main sampling run's
    time, from the stages' outputs."""
    rows = []
    for dataset in datasets:
        for model in models:
            train = read_json(root / paths.train(dataset, model) / "train.json")
            sample = read_json(root / paths.sample(dataset, model) / "sample.json")
            metrics = read_json(root / paths.evaluate(dataset, model) / "metrics.json")
            row = {"dataset": dataset, "model": model, "budget": metrics.get("budget", DEFAULT_BUDGET),
                   "recipe": train["recipe"]}
            if "class_accuracy" in metrics:
                row["class accuracy"] = mean_std(metrics["class_accuracy"], metrics.get("class_accuracy_std"))
            for key, label in (("bpd", "bits/dim (bound)"), ("bpd_ode", "bits/dim (ODE)")):
                if key in metrics:
                    row[label] = f"{metrics[key]:.3f} ± {metrics[f'{key}_stderr']:.2g}"
            row["train s"] = f"{train['train_seconds']:.0f}"
            row["train images/s"] = f"{train['images_per_second']:.0f}"
            row["sample s"] = f"{sample['sample_seconds']:.0f}"
            rows.append(row)
    return rows


def collect(root: Path = Path("."), details: bool = False) -> dict:
    """The record of the run in ``root``: its stamp (``outputs/run.json``) and its report's summary (with
    ``details``, also :func:`model_details`)."""
    params = validate(ResultsParams, read_yaml(root / "params.yaml"))
    stamp, csv = root / RUN_FILE, root / paths.report() / "results.csv"
    for needed, how in ((stamp, "make run writes it (it times dvc repro)"), (csv, "run: dvc repro report")):
        if not needed.is_file():
            raise StageInputError(f"{needed} not found: {how}")
    every = pd.read_csv(csv)
    table = every[every.table == "main"].copy()
    table["best"] = table.best.map(lambda v: v is True or str(v) == "True")
    level = params.evaluate.significance
    floors: dict[str, dict[str, str]] = {}
    for r in table[table.model == FLOOR_MODEL].itertuples():
        floors.setdefault(r.dataset, {})[r.backend] = mean_std(r.fid, r.fid_std)
    summary = summary_table(table, level)
    datasets, models = list(params.pipeline.datasets), list(params.pipeline.models)
    record = {**read_json(stamp), "level": level, "datasets": datasets, "models": models,
              "sentences": plain_summary(table, level, every[every.table == "steps"]),
              "lines": summary_lines(table, level),
              "summary": summary.astype(object).where(summary.notna(), "").to_dict("records"), "floors": floors}
    if details:
        record["details"] = model_details(root, datasets, models)
        if (root / RUN_LOG).is_file():
            record["stages"] = stage_times((root / RUN_LOG).read_text(encoding="utf-8", errors="replace"))
    return record


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def render_block(record: dict, name: str = DEFAULT_RUN) -> str:
    """The Markdown block between the run's markers (:func:`markers`), markers included."""
    table = pd.DataFrame(record["summary"])
    floors = "; ".join(f"{dataset}: " + ", ".join(f"{b} {v}" for b, v in by.items())
                       for dataset, by in record["floors"].items())
    start, end = markers(name)
    how = f"{COMMAND}" if name == DEFAULT_RUN else f"{COMMAND} --name {name}"
    made = "(`make run`) on params.yaml" if name == DEFAULT_RUN else "on params.yaml with those changes"
    details = [] if "details" not in record else ["", pd.DataFrame(record["details"]).to_markdown(index=False), "",
                                                  DETAILS_NOTE]
    if record.get("stages"):
        stages = pd.DataFrame(record["stages"]).astype(object)
        stages["seconds"] = stages["seconds"].map(lambda v: f"{v:.0f}")
        details += ["", stages.where(stages.notna(), "").to_markdown(index=False), "", STAGES_NOTE]
    return "\n".join([
        start,
        f"*Generated by `{how}` from the outputs of `{record['command']}` {made} at "
        f"commit `{record['commit']}`, {record['date']}, on {record['machine']}; it took "
        f"{_duration(record['seconds'])}. Do not edit by hand.*",
        "",
        *([" ".join(record["sentences"]), ""] if record.get("sentences") else []),
        *record["lines"],
        "",
        table.to_markdown(index=False),
        "",
        f"Real-data floor (FID of the held-out images): {floors}. {summary_note(record['level'])}",
        *details,
        end,
    ])


DETAILS_NOTE = ("Recipe: the model's parameterisation, noise levels and loss (its params block). Class accuracy: the "
                "classifier backend's class of each image generated for a class, mean ± std over the draws. "
                "Bits/dim: the bound and the probability-flow ODE's likelihood of held-out images, ± their "
                "standard error. Train s and images/s: the training loop (train.json); sample s: the main sampling "
                "run of every draw (sample.json).")


STAGES_NOTE = ("Each stage that ran, in order: its own time (from its start to its closing line, without the "
               "interpreter's start and DVC's bookkeeping, which the total above includes) and its process's peak "
               "resident memory. Stages restored from DVC's cache are not listed.")


def current_block(text: str, where: Path, name: str = DEFAULT_RUN) -> str:
    """The run's block of ``text``, markers included."""
    first, last = markers(name)
    start, end = text.find(first), text.find(last)
    if start < 0 or end < start:
        raise StageInputError(f"{where} has no results block: add the lines {first} and {last} where it goes")
    return text[start:end + len(last)]


def replace_block(text: str, block: str, where: Path, name: str = DEFAULT_RUN) -> str:
    """``text`` with the run's block between its markers replaced by ``block``."""
    return text.replace(current_block(text, where, name), block, 1)


def figure(record: dict, root: Path, out: Path) -> None:
    """The sample grid of each model of the record's first dataset, its FID ± std under each backend below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    dataset, models = record["datasets"][0], record["models"]
    rows = {r["model"]: r for r in record["summary"] if r["dataset"] == dataset and not r["task"].endswith("(w=0)")}
    backends = [k.removeprefix("FID ") for k in record["summary"][0] if k.startswith("FID ")]
    fig, axes = plt.subplots(1, len(models), figsize=(2.6 * len(models), 3.1), squeeze=False)
    for ax, model in zip(axes[0], models):
        ax.imshow(Image.open(root / paths.sample(dataset, model) / "grid.png"), interpolation="nearest")
        ax.set_axis_off()
        scores = "\n".join(f"FID {rows[model][f'FID {b}']} ({b})" for b in backends if model in rows)
        ax.set_title(f"{model}\n{scores}", fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(root: Path = Path("."), name: str = DEFAULT_RUN) -> None:
    """Record the run in ``root`` as ``name``, draw its figure, and rewrite its blocks from the record."""
    record = collect(root, details=name != DEFAULT_RUN)
    files, out, fig = block_files(name), record_path(name), figure_path(name)
    for file in files:
        current_block((root / file).read_text(), file, name)  # every file has its block before anything is written
    (root / out).parent.mkdir(parents=True, exist_ok=True)
    (root / fig).parent.mkdir(parents=True, exist_ok=True)
    write_json(root / out, record)
    figure(record, root, root / fig)
    for file in files:
        path = root / file
        with atomic_path(path) as tmp:
            tmp.write_text(replace_block(path.read_text(), render_block(record, name), file, name))
    print(f"wrote {out}, {fig} and the blocks of {', '.join(map(str, files))}")


def stale(root: Path = Path(".")) -> list[str]:
    """The files whose block of a recorded run differs from the one rendered from its record."""
    if not (root / RECORD).is_file():
        raise StageInputError(f"{RECORD} not found: run {COMMAND} after make run")
    differ = []
    for name in recorded_runs(root):
        block = render_block(read_json(root / record_path(name)), name)
        differ += [f"{file} ({name})" if name != DEFAULT_RUN else str(file) for file in block_files(name)
                   if current_block((root / file).read_text(), file, name) != block]
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["write", "check", "time"], default="write",
                        help="write (default): record the run and write the blocks; check: the blocks agree with "
                             "the record; time -- COMMAND: run COMMAND and write outputs/run.json and its "
                             "output, outputs/run.log")
    parser.add_argument("--name", default=DEFAULT_RUN,
                        help="write: record the run under this name (docs/data/<name>-run.json, its block in "
                             "docs/results.md) instead of as the default run")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="with time: the command to run")
    args = parser.parse_args(argv)
    try:
        if args.action == "time":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("time needs a command: python -m diffusionlab.results time -- dvc repro")
            return timed(command)
        if args.action == "check":
            differ = stale()
            if differ:
                print(f"the results block of {', '.join(differ)} differs from its record in {RECORD.parent}: run "
                      f"{COMMAND} [--name NAME] after the run, or restore the block", file=sys.stderr)
                return 1
            return 0
        write(name=args.name)
        return 0
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
