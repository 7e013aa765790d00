"""The results blocks of README.md and docs/results.md, generated from a run's outputs so that no number in
them is typed by hand or goes stale.

    make run                               # times dvc repro: outputs/run.json (commit, date, machine, seconds)
    python -m diffusionlab.results         # record the run in docs/data/default-run.json, write the blocks
                                           # and the figure docs/figures/default-run.png
    python -m diffusionlab.results check   # the blocks agree with the record (the test suite runs this)

The block is the summary that leads the report (:func:`diffusionlab.evaluation.report.summary_table`), read
from ``outputs/report/results.csv``, stamped with the commit, date, machine and time of the run.
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
from .config.sections import EvaluateConfig, PipelineConfig
from .device import cpu_name
from .errors import EXPECTED_ERRORS, StageInputError
from .evaluation.report import FLOOR_MODEL, mean_std, summary_lines, summary_note, summary_table
from .io import atomic_path, read_json, write_json
from .validation import View, read_yaml, validate

RUN_FILE = paths.OUTPUTS / "run.json"
"""Written by ``make run``: the commit, date, machine and wall time of its ``dvc repro``."""
RECORD = Path("docs/data/default-run.json")
"""What the blocks are rendered from: the summary of the run's report and the run's stamp."""
FIGURE = Path("docs/figures/default-run.png")
BLOCK_FILES = (Path("README.md"), Path("docs/results.md"))
START = "<!-- results:start -->"
END = "<!-- results:end -->"
COMMAND = "python -m diffusionlab.results"


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
    """Run ``command`` and, when it succeeds, write its wall time with the commit, date and machine to ``out``."""
    start = time.monotonic()
    code = subprocess.call(command)
    if code == 0:
        write_json(out, {"command": " ".join(command), "seconds": round(time.monotonic() - start, 1),
                         "commit": git_commit(root), "date": datetime.date.today().isoformat(),
                         "machine": machine()})
    return code


def collect(root: Path = Path(".")) -> dict:
    """The record of the run in ``root``: its stamp (``outputs/run.json``) and its report's summary."""
    params = validate(ResultsParams, read_yaml(root / "params.yaml"))
    stamp, csv = root / RUN_FILE, root / paths.report() / "results.csv"
    for needed, how in ((stamp, "make run writes it (it times dvc repro)"), (csv, "run: dvc repro report")):
        if not needed.is_file():
            raise StageInputError(f"{needed} not found: {how}")
    table = pd.read_csv(csv)
    table = table[table.table == "main"].copy()
    table["best"] = table.best.map(lambda v: v is True or str(v) == "True")
    level = params.evaluate.significance
    floors: dict[str, dict[str, str]] = {}
    for r in table[table.model == FLOOR_MODEL].itertuples():
        floors.setdefault(r.dataset, {})[r.backend] = mean_std(r.fid, r.fid_std)
    summary = summary_table(table, level)
    return {**read_json(stamp), "level": level, "datasets": list(params.pipeline.datasets),
            "models": list(params.pipeline.models), "lines": summary_lines(table, level),
            "summary": summary.astype(object).where(summary.notna(), "").to_dict("records"), "floors": floors}


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def render_block(record: dict) -> str:
    """The Markdown block between :data:`START` and :data:`END`, markers included."""
    table = pd.DataFrame(record["summary"])
    floors = "; ".join(f"{dataset}: " + ", ".join(f"{b} {v}" for b, v in by.items())
                       for dataset, by in record["floors"].items())
    return "\n".join([
        START,
        f"*Generated by `{COMMAND}` from the outputs of `{record['command']}` (`make run`) on params.yaml at "
        f"commit `{record['commit']}`, {record['date']}, on {record['machine']}; it took "
        f"{_duration(record['seconds'])}. Do not edit by hand.*",
        "",
        *record["lines"],
        "",
        table.to_markdown(index=False),
        "",
        f"Real-data floor (FID of the held-out images): {floors}. {summary_note(record['level'])}",
        END,
    ])


def current_block(text: str, where: Path) -> str:
    """The block of ``text``, markers included."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise StageInputError(f"{where} has no results block: add the lines {START} and {END} where it goes")
    return text[start:end + len(END)]


def replace_block(text: str, block: str, where: Path) -> str:
    """``text`` with its block between the markers replaced by ``block``."""
    return text.replace(current_block(text, where), block, 1)


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


def write(root: Path = Path(".")) -> None:
    """Record the run in ``root``, draw its figure, and rewrite every block from the record."""
    record = collect(root)
    for name in BLOCK_FILES:
        current_block((root / name).read_text(), name)  # every file has its block before anything is written
    (root / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (root / FIGURE).parent.mkdir(parents=True, exist_ok=True)
    write_json(root / RECORD, record)
    figure(record, root, root / FIGURE)
    for name in BLOCK_FILES:
        path = root / name
        with atomic_path(path) as tmp:
            tmp.write_text(replace_block(path.read_text(), render_block(record), name))
    print(f"wrote {RECORD}, {FIGURE} and the blocks of {', '.join(map(str, BLOCK_FILES))}")


def stale(root: Path = Path(".")) -> list[str]:
    """The files whose block differs from the one rendered from the record."""
    if not (root / RECORD).is_file():
        raise StageInputError(f"{RECORD} not found: run {COMMAND} after make run")
    block = render_block(read_json(root / RECORD))
    return [str(name) for name in BLOCK_FILES if current_block((root / name).read_text(), name) != block]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["write", "check", "time"], default="write",
                        help="write (default): record the run and write the blocks; check: the blocks agree with "
                             "the record; time -- COMMAND: run COMMAND and write outputs/run.json")
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
                print(f"the results block of {', '.join(differ)} differs from {RECORD}: run {COMMAND} after make "
                      "run, or restore the block", file=sys.stderr)
                return 1
            return 0
        write()
        return 0
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
