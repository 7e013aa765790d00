"""What every benchmark shares: the machine's description, one measurement per process, peak
memory, and results written as JSON and as a Markdown table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from diffusionlab.device import cpu_name  # noqa: E402
from diffusionlab.timeline import peak_gpu_mib, peak_rss_mib  # noqa: E402


def machine(device: torch.device) -> dict:
    """The machine and software a measurement ran on."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}
    for package in ("torch", "torchvision", "torch-fidelity", "dvc", "mlflow"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    info["device"] = device.type
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def describe(info: dict) -> str:
    where = f"{info['gpu']} ({info['gpu_memory_gib']} GiB), " if info.get("gpu") else ""
    return (f"{where}{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads); "
            f"Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
            f"torch-fidelity {info['torch-fidelity']}, dvc {info['dvc']}, mlflow {info['mlflow']}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process and, on CUDA, the peak memory torch allocated, in MiB."""
    gpu = peak_gpu_mib() if device.type == "cuda" else None
    return {"peak_rss_mib": peak_rss_mib(), **({} if gpu is None else {"peak_gpu_mib": gpu})}


def isolated(script: str, spec: dict) -> dict | None:
    """Run ``script --one SPEC`` in a fresh process (its own peak memory, nothing compiled carried
    over) and return the result it printed, or None (with its error) when it failed."""
    proc = subprocess.run([sys.executable, script, "--one", json.dumps(spec)], capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        print(f"{spec}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(found[-1].removeprefix("RESULT "))


def parse_args(parser: argparse.ArgumentParser, measure_one: Callable[[dict], dict]) -> argparse.Namespace | None:
    """Add the options every benchmark has (``--device``, ``--out`` and the hidden ``--one SPEC`` of
    :func:`isolated`) and parse. A ``--one`` process runs ``measure_one(SPEC)``, prints its result
    for :func:`isolated` and gets None: it has nothing else to do."""
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is None:
        return args
    print("RESULT " + json.dumps(measure_one(json.loads(args.one))), flush=True)
    return None


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (header, key, format spec); a missing or None value shows as -."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[key], spec) if row.get(key) is not None else "-" for _, key, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: str | Path, name: str, info: dict, intro: str, sections: dict[str, str],
                  data: dict) -> None:
    """``out/name.json`` (``data`` with the machine) and ``out/name.md`` (``intro``, the machine and
    one Markdown section per entry of ``sections``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": info, **data}, indent=2) + "\n")
    body = [f"# {name}", "", intro, "", f"Machine: {describe(info)}.", ""]
    for title, text in sections.items():
        body += [f"## {title}", "", text, ""]
    (out / f"{name}.md").write_text("\n".join(body))
    print(f"wrote {out / name}.md and {out / name}.json")
