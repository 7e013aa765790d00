"""Pipeline overhead: what `make run` costs from nothing, stage by stage, what `dvc repro` costs when
everything is up to date, and what a sampling change re-runs. Not a test: it measures and writes
benchmarks/results/pipeline.{json,md}.

It works in a fresh clone of the committed project (HEAD; uncommitted changes are not in it), with
its own outputs and MLflow store, so the workspace is untouched:

    1. `make run`: wall time of set-up and of each stage (from DVC's "Running stage" lines to the
       next), the work inside each stage (its own "finished in" line; the rest is start-up:
       Python, imports, DVC's hashing), and the largest process's peak memory;
    2. a no-op `dvc repro`: the median of three, and the stages it ran (none is right);
    3. `dvc exp run -S sample.steps=N`: its wall time and the stages it ran and skipped (sample,
       evaluate and report only is right: no training).

    python benchmarks/pipeline.py --keep
"""

from __future__ import annotations

import argparse
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

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
FINISHED = re.compile(r"diffusionlab: (\S+) finished in ([0-9.]+) s")


def timed_run(command: list[str], cwd: Path, log: Path, venv: Path | None = None) -> dict:
    """Run ``command``, streaming its output to ``log``, with the virtual environment ``venv`` active if
    given (as `source .venv/bin/activate` leaves a shell); the stages DVC ran (with the wall time of
    each up to the next stage or the end, and the work time the stage reported) and the ones it skipped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    stages: dict[str, dict] = {}
    skipped: list[str] = []
    current = None
    start = last = time.perf_counter()
    with log.open("a") as out, subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True) as proc:
        out.write(f"$ {' '.join(command)}\n")
        for line in proc.stdout:
            out.write(line)
            now = time.perf_counter()
            if (m := RUNNING.search(line)) or (s := SKIPPED.search(line)):
                if current:
                    stages[current]["wall_seconds"] = now - last
                current = m.group(1) if m else None
                if m:
                    stages[current] = {"started_seconds": now - start}
                else:
                    skipped.append(s.group(1))
                last = now
            elif (f := FINISHED.search(line)) and f.group(1) in stages:
                stages[f.group(1)]["work_seconds"] = float(f.group(2))
        proc.wait()
    end = time.perf_counter()
    if current:
        stages[current]["wall_seconds"] = end - last
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit {proc.returncode}; its output is in {log}")
    return {"seconds": end - start, "stages": stages, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25, help="sample.steps of the sampling change")
    parser.add_argument("--repeats", type=int, default=3, help="no-op repro runs (the median is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="diffusionlab-pipeline-")) / "project"
    log = clone.parent / "pipeline.log"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    print(f"clone: {clone}; output: {log}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        full = timed_run(["make", "run"], clone, log)
        first = min((s["started_seconds"] for s in full["stages"].values()), default=full["seconds"])
        full["setup_seconds"] = first
        full["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"make run: {full['seconds']:.1f} s", flush=True)
        venv = clone / ".venv"  # the README's commands run after `source .venv/bin/activate`
        noop = [timed_run(["dvc", "repro"], clone, log, venv) for _ in range(args.repeats)]
        noop_seconds = statistics.median(r["seconds"] for r in noop)
        print(f"no-op dvc repro: {noop_seconds:.2f} s", flush=True)
        change = timed_run(["dvc", "exp", "run", "-S", f"sample.steps={args.steps}"], clone, log, venv)
        print(f"sampling change: {change['seconds']:.1f} s, ran {sorted(change['stages'])}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(clone.parent, ignore_errors=True)
    ran = sorted(change["stages"])
    summary = [
        {"measure": "make run (set-up and every stage)", "seconds": full["seconds"]},
        {"measure": "set-up (uv sync) before the first stage", "seconds": full["setup_seconds"]},
        {"measure": f"no-op dvc repro (median of {args.repeats})", "seconds": noop_seconds,
         "note": "stages run: " + (", ".join(sorted({s for r in noop for s in r["stages"]})) or "none")},
        {"measure": f"dvc exp run -S sample.steps={args.steps}", "seconds": change["seconds"],
         "note": f"ran: {', '.join(ran)}; retrained: {'yes' if any(s.startswith('train') for s in ran) else 'no'}"},
    ]
    stages = [{"stage": name, **s, "startup_seconds": s["wall_seconds"] - s["work_seconds"]
               if "work_seconds" in s else None} for name, s in full["stages"].items()]
    change_stages = [{"stage": name, **s} for name, s in change["stages"].items()]
    columns = [("stage", "stage", ""), ("wall s", "wall_seconds", ".1f"), ("work s", "work_seconds", ".1f"),
               ("start-up and DVC s", "startup_seconds", ".1f")]
    write_results(
        args.out, "pipeline", machine(torch.device("cpu")),
        f"The default pipeline (params.yaml at commit {commit}) in a fresh clone; the largest process of `make run` "
        f"peaked at {full['peak_rss_mib']:,.0f} MiB resident.",
        {"Summary": markdown_table(summary, [("measure", "measure", ""), ("seconds", "seconds", ".1f"),
                                             ("", "note", "")]),
         "make run, stage by stage": markdown_table(stages, columns),
         f"sample.steps={args.steps}, stage by stage": markdown_table(change_stages, columns[:3])},
        {"commit": commit, "make_run": full, "noop": noop, "sampling_change": change, "summary": summary})
    if args.keep:
        print(f"kept {clone}", file=sys.stderr)


if __name__ == "__main__":
    main()
