"""Pipeline overhead: what `make run` costs from nothing, stage by stage, what `dvc repro` costs when
everything is up to date, and what a sampling change re-runs. Not a test: it measures and writes
benchmarks/results/pipeline.{json,md}.

It works in a fresh clone of the committed project (HEAD; uncommitted changes are not in it), with
its own outputs and MLflow store, so the workspace is untouched:

    1. `make run`: wall time of set-up and of each stage (from DVC's "Running stage" lines to the
       next), and where it goes: the interpreter's start, the imports (by package, from
       `-X importtime`), the stage's work (and within it the opening and closing of its MLflow run),
       the process's exit, and DVC's own time before and after the process (each stage records its
       moments in a file, `DIFFUSIONLAB_TIMINGS`); and the largest process's peak memory;
    2. a no-op `dvc repro`: the median of three, and the stages it ran (none is right);
    3. `dvc exp run -S sample.steps=N`: its wall time and the stages it ran and skipped (sample,
       evaluate and report only is right: no training).

    python benchmarks/pipeline.py --keep
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, ROOT, machine, markdown_table, write_results

from diffusionlab.pipeline.cli import FINISHED_LINE  # noqa: E402  (common puts src/ on the path)

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
COMMAND = re.compile(r"^> python ")
IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def timed_run(command: list[str], cwd: Path, log: Path, venv: Path | None = None,
              extra_env: dict[str, str] | None = None) -> dict:
    """Run ``command``, streaming its output to ``log``, with the virtual environment ``venv`` active if
    given (as `source .venv/bin/activate` leaves a shell) and ``extra_env`` set; the stages DVC ran (with
    the wall time of each up to the next stage or the end, the work time the stage reported, and, under
    `-X importtime`, the seconds of its imports by top-level package) and the ones it skipped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    stages: dict[str, dict] = {}
    skipped: list[str] = []
    current, importing = None, False
    start = last = time.perf_counter()
    with log.open("a") as out, subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True) as proc:
        out.write(f"$ {' '.join(command)}\n")
        for line in proc.stdout:
            if (i := IMPORT.match(line)) and importing:  # the stage's own imports, between its command and its end
                imports = stages[current].setdefault("imports", {})
                package = i.group(2).split(".")[0]
                imports[package] = imports.get(package, 0.0) + int(i.group(1)) / 1e6
                continue
            if i:
                continue
            out.write(line)
            now = time.perf_counter()
            if (m := RUNNING.search(line)) or (s := SKIPPED.search(line)):
                if current:
                    stages[current]["wall_seconds"] = now - last
                current, importing = (m.group(1) if m else None), False
                if m:
                    stages[current] = {"started_seconds": now - start}
                else:
                    skipped.append(s.group(1))
                last = now
            elif current and COMMAND.match(line):
                importing = True
            elif (f := FINISHED_LINE.search(line)) and f.group(1) in stages:
                stages[f.group(1)]["work_seconds"] = float(f.group(2))
                importing = False
        proc.wait()
    end = time.perf_counter()
    if current:
        stages[current]["wall_seconds"] = end - last
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit {proc.returncode}; its output is in {log}")
    return {"seconds": end - start, "stages": stages, "skipped": skipped}


def stage_timings(path: Path) -> dict[str, dict]:
    """Where each stage process's time went, from the records its stage script and ``diffusionlab.timeline`` wrote
    to ``path``: seconds of the interpreter's start, the imports before the stage's work, the work (and within it the
    MLflow run's opening and closing), the exit after the work, and the whole process; per stage name."""
    if not path.is_file():
        return {}
    by_pid: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_pid.setdefault(record["pid"], {}).update(record)
    out = {}
    for r in sorted(by_pid.values(), key=lambda r: r.get("created", 0.0)):
        if "stage" not in r or "exited" not in r or r["stage"] in out:  # a torchrun worker after its launcher
            continue
        marks, spans = r["marks"], r["spans"]
        out[r["stage"]] = {"interpreter": r["started"] - r["created"], "imports": marks["imported"] - r["started"],
                           "before_work": marks["work_start"] - r["created"],
                           "work": marks["work_end"] - marks["work_start"],
                           "mlflow_open": spans.get("mlflow_open"), "mlflow_close": spans.get("mlflow_close"),
                           "exit": r["exited"] - marks["work_end"], "process": r["exited"] - r["created"]}
    return out


def stage_rows(run: dict, timings: dict[str, dict]) -> list[dict]:
    """One row per stage DVC ran: its wall time, work and start-up (wall minus work) as DVC's output shows them,
    with the parts of :func:`stage_timings` and DVC's own time (the wall time outside the process)."""
    rows = []
    for name, s in run["stages"].items():
        t = timings.get(name, {})
        imports = sorted(s.get("imports", {}).items(), key=lambda kv: -kv[1])
        rows.append({"stage": name, **s, **{f"{k}_seconds": v for k, v in t.items()},
                     "startup_seconds": s["wall_seconds"] - s["work_seconds"] if "work_seconds" in s else None,
                     "dvc_seconds": s["wall_seconds"] - t["process"] if "process" in t else None,
                     "largest_imports": ", ".join(f"{k} {v:.1f}" for k, v in imports[:4] if v >= 0.05)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="sample.steps of the sampling change (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="no-op repro runs (the median is reported; 0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="diffusionlab-pipeline-")) / "project"
    log = clone.parent / "pipeline.log"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    print(f"clone: {clone}; output: {log}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    timings = clone.parent / "timings.jsonl"
    try:
        full = timed_run(["make", "run"], clone, log, extra_env={"PYTHONPROFILEIMPORTTIME": "1",
                                                                 "DIFFUSIONLAB_TIMINGS": str(timings)})
        first = min((s["started_seconds"] for s in full["stages"].values()), default=full["seconds"])
        full["setup_seconds"] = first
        full["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"make run: {full['seconds']:.1f} s", flush=True)
        stages = stage_rows(full, stage_timings(timings))
        venv = clone / ".venv"  # the README's commands run after `source .venv/bin/activate`
        noop = [timed_run(["dvc", "repro"], clone, log, venv) for _ in range(args.repeats)]
        change = timed_run(["dvc", "exp", "run", "-S", f"sample.steps={args.steps}"], clone, log, venv) \
            if args.steps else None
    finally:
        if not args.keep:
            shutil.rmtree(clone.parent, ignore_errors=True)
    summary = [
        {"measure": "make run (set-up and every stage)", "seconds": full["seconds"]},
        {"measure": "set-up (uv sync) before the first stage", "seconds": full["setup_seconds"]},
    ]
    if noop:
        summary.append({"measure": f"no-op dvc repro (median of {args.repeats})",
                        "seconds": statistics.median(r["seconds"] for r in noop),
                        "note": "stages run: " + (", ".join(sorted({s for r in noop for s in r["stages"]})) or "none")})
    if change:
        ran = sorted(change["stages"])
        summary.append({"measure": f"dvc exp run -S sample.steps={args.steps}", "seconds": change["seconds"],
                        "note": f"ran: {', '.join(ran)}; retrained: "
                                f"{'yes' if any(s.startswith('train') for s in ran) else 'no'}"})
    for row in summary:
        print(f"{row['measure']}: {row['seconds']:.1f} s {row.get('note', '')}", flush=True)
    columns = [("stage", "stage", ""), ("wall s", "wall_seconds", ".1f"), ("work s", "work_seconds", ".1f"),
               ("start-up s", "startup_seconds", ".1f"), ("to work", "before_work_seconds", ".2f"),
               ("interpreter", "interpreter_seconds", ".2f"),
               ("imports", "imports_seconds", ".2f"), ("MLflow open", "mlflow_open_seconds", ".2f"),
               ("MLflow close", "mlflow_close_seconds", ".2f"), ("exit", "exit_seconds", ".2f"),
               ("DVC", "dvc_seconds", ".2f"), ("largest imports (s)", "largest_imports", "")]
    write_results(
        args.out, "pipeline", machine(torch.device("cpu")),
        f"The default pipeline (params.yaml at commit {commit}) in a fresh clone; the largest process of `make run` "
        f"peaked at {full['peak_rss_mib']:,.0f} MiB resident. Start-up is a stage's wall time minus its work: the "
        "interpreter's start, the imports before the work, the exit after it and DVC's own time before and after "
        "the process; `to work` is the time from the process's start to its work; MLflow open and close are part "
        "of the work. `make run` ran under `-X importtime`, which "
        "slows imports slightly.",
        {"Summary": markdown_table(summary, [("measure", "measure", ""), ("seconds", "seconds", ".1f"),
                                             ("", "note", "")]),
         "make run, stage by stage": markdown_table(stages, columns),
         **({f"sample.steps={args.steps}, stage by stage": markdown_table(
             [{"stage": name, **s} for name, s in change["stages"].items()], columns[:3])} if change else {})},
        {"commit": commit, "make_run": full, "stages": stages, "noop": noop, "sampling_change": change,
         "summary": summary})
    if args.keep:
        print(f"kept {clone}", file=sys.stderr)


if __name__ == "__main__":
    main()
