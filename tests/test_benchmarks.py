"""The benchmark scripts' bookkeeping: what they read from DVC's output and how they write tables.
The measurements themselves are run by `make bench`, never by the tests."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pipeline import timed_run  # noqa: E402

from common import markdown_table, write_results  # noqa: E402

DVC_LIKE = r"""
import time
print("Stage 'prepare@digits' didn't change, skipping")
print("Running stage 'sample@digits-ddpm':")
print("> python stages/sample.py --dataset digits --model ddpm")
time.sleep(0.3)
print("2026-11-26 05:28:45,423 diffusionlab: sample@digits-ddpm finished in 0.2 s")
print("Updating lock file 'dvc.lock'")
print("Running stage 'report':")
time.sleep(0.1)
print("2026-11-26 05:28:46,001 diffusionlab: report finished in 0.05 s")
"""


def test_pipeline_benchmark_reads_the_stages_dvc_ran_and_skipped_and_their_times(tmp_path):
    out = timed_run([sys.executable, "-c", DVC_LIKE], tmp_path, tmp_path / "log")
    assert out["skipped"] == ["prepare@digits"]
    assert list(out["stages"]) == ["sample@digits-ddpm", "report"]
    sample, report = out["stages"]["sample@digits-ddpm"], out["stages"]["report"]
    assert sample["work_seconds"] == 0.2 and report["work_seconds"] == 0.05
    assert 0.3 <= sample["wall_seconds"] < 0.3 + 1.0 and 0.1 <= report["wall_seconds"] < out["seconds"]
    assert "Updating lock file" in (tmp_path / "log").read_text()


def test_pipeline_benchmark_stops_on_a_failed_command(tmp_path):
    with pytest.raises(SystemExit, match="failed with exit 3"):
        timed_run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, tmp_path / "log")


def test_results_are_written_as_json_and_a_markdown_table(tmp_path):
    rows = [{"name": "a", "rate": 1234.5, "mib": None}, {"name": "b", "rate": 2.0}]
    table = markdown_table(rows, [("name", "name", ""), ("images/s", "rate", ",.1f"), ("MiB", "mib", ".0f")])
    assert table.splitlines() == ["| name | images/s | MiB |", "|---|---|---|", "| a | 1,234.5 | - |",
                                  "| b | 2.0 | - |"]
    write_results(tmp_path, "x", {"cpu": "c", "cpu_count": 2, "torch_threads": 2, "python": "3", "torch": "t",
                                  "torchvision": "v", "torch-fidelity": "f", "dvc": "d", "mlflow": "m"},
                  "intro", {"Table": table}, {"results": rows})
    assert json.loads((tmp_path / "x.json").read_text())["results"] == rows
    text = (tmp_path / "x.md").read_text()
    assert "c (2 cores, 2 torch threads)" in text and "## Table\n\n| name |" in text
