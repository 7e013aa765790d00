"""The sample and evaluate stages at scale, run as a user runs them on a project that has trained models (after
`make run`). Not a test: it measures and writes benchmarks/results/sample_stage.{json,md}.

    1. processes: the sample stage's images/s (its main setting, rank 0's wall time including the gathering) for
       1 process with every thread and for N processes with one thread each (torchrun sets OMP_NUM_THREADS=1),
       and whether their samples.npy are byte-identical;
    2. paper: the stage under ``evaluate.protocol: paper`` (sample at ``--paper-samples``, evaluate at
       ``--paper-evaluate-samples`` with InceptionV3 weights it makes at random when none are given: the numbers are
       meaningless, the time and memory are not), with the peak resident memory of each stage's largest process;
    3. the CIFAR-10 U-Net's forward FLOPs per image and the H200 time they imply for 50,000 samples at 1000 and
       at 50 steps, at a stated fraction of its bf16 peak.

    python benchmarks/sample_stage.py --project ../defrun --model ddpm --processes 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import RESULTS, machine, markdown_table, write_results

H200_BF16_TFLOPS = 989.0


def run_stage(project: Path, stage: str, dataset: str, model: str, params: dict) -> dict:
    """Run ``stages/<stage>.py`` in ``project`` with ``params`` in a fresh process; its wall time, exit status and
    the peak resident memory of its largest process (torchrun's workers included)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=project, delete=False) as f:
        yaml.safe_dump(params, f, sort_keys=False)
    code = ("import resource, subprocess, sys, json, time; start = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('RESULT ' + json.dumps({'rc': rc, 'seconds': time.perf_counter() - start, "
            "'peak_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    command = [sys.executable, "-c", code, str(project / ".venv/bin/python"), f"stages/{stage}.py", "--dataset",
               dataset, "--params", f.name] + (["--model", model] if model else [])
    try:
        proc = subprocess.run(command, cwd=project, capture_output=True, text=True)
    finally:
        Path(f.name).unlink()
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(found[-1].removeprefix("RESULT ")) if found else {"rc": proc.returncode}
    if result["rc"]:
        print(proc.stderr[-3000:], file=sys.stderr)
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def processes(project: Path, base: dict, dataset: str, model: str, counts: list[int], num_samples: int) -> list[dict]:
    rows = []
    for n in counts:
        params = json.loads(json.dumps(base))
        params["sample"].update(nproc_per_node=n, num_samples=num_samples, sweep_steps=[], guidance_sweep=[])
        result = run_stage(project, "sample", dataset, model, params)
        card = json.loads((project / f"outputs/sample/{dataset}-{model}/sample.json").read_text())
        rows.append({"processes": n, "threads": torch.get_num_threads() if n == 1 else 1, **result,
                     "images": card["num_samples"] * card["draws"], "images_per_second": card["images_per_second"],
                     "samples_sha256": digest(project / f"outputs/sample/{dataset}-{model}/samples.npy")})
        print(rows[-1], flush=True)
    return rows


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with random weights in the original file format: the time and memory of the
    real network, none of its meaning."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as inception

    if path.is_file():
        return path
    torch.manual_seed(0)
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None):
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():  # batch-norm statistics of random images, so that activations keep their scale
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def paper(project: Path, base: dict, dataset: str, model: str, samples: int, evaluate_samples: int, steps: int,
          weights: Path) -> list[dict]:
    rows = []
    params = json.loads(json.dumps(base))
    params["evaluate"].update(protocol="paper", inception_weights=str(weights), batch_size=100)
    params["sample"].update(num_samples=samples, steps=steps, nproc_per_node=1)
    if samples:
        rows.append({"stage": "sample", "images": samples, "steps": steps,
                     **run_stage(project, "sample", dataset, model, params)})
        print(rows[-1], flush=True)
    params["sample"]["num_samples"] = evaluate_samples
    run_stage(project, "sample", dataset, model, params)
    for stage in ("reference", "evaluate"):
        result = run_stage(project, stage, dataset, model if stage == "evaluate" else "", params)
        rows.append({"stage": stage, "images": evaluate_samples, "steps": steps, **result})
        print(rows[-1], flush=True)
    return rows


def flops_per_image() -> float:
    """Forward FLOPs per image of the default CIFAR-10 U-Net (params.yaml's datasets.cifar10.unet)."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffusionlab.config.params import load_params
    from diffusionlab.families.registry import build_process
    from diffusionlab.runtime.factory import build_network

    cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml").run("cifar10", "ddpm")
    process = build_process(cfg.model, torch.device("cpu"))
    net = build_network(cfg, 3, process).eval()
    x, t, y = torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, y) if cfg.model.class_conditional else net(x, t)
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, type=Path, help="a project after `make run` (it is changed)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="ddpm")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-samples", type=int, default=600)
    parser.add_argument("--paper-samples", type=int, default=50_000, help="0: skip the paper preset's large sample")
    parser.add_argument("--paper-evaluate-samples", type=int, default=500)
    parser.add_argument("--paper-steps", type=int, default=10)
    parser.add_argument("--inception-weights", type=Path, help="real weights; random ones are made when absent")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--fraction-of-peak", type=float, default=0.3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    project = args.project.resolve()
    base = yaml.safe_load((project / "params.yaml").read_text())
    started = time.time()
    proc_rows = [] if args.skip_processes else processes(project, base, args.dataset, args.model, args.processes,
                                                         args.num_samples)
    paper_rows = []
    if not args.skip_paper:
        weights = args.inception_weights or random_inception_weights(project / "data/weights/random-inception.pth")
        paper_rows = paper(project, base, args.dataset, args.model, args.paper_samples, args.paper_evaluate_samples,
                           args.paper_steps, weights)
    flops = flops_per_image()
    rate = H200_BF16_TFLOPS * 1e12 * args.fraction_of_peak
    h200 = [{"steps": n, "gflops_per_image": flops / 1e9, "seconds": 50_000 * n * flops / rate} for n in (1000, 50)]
    info = machine(torch.device("cpu"))
    sections = {
        "Processes": markdown_table(proc_rows, [("processes", "processes", "d"), ("threads each", "threads", "d"),
                                                ("images", "images", "d"), ("images/s", "images_per_second", ".1f"),
                                                ("stage seconds", "seconds", ".1f"),
                                                ("peak RSS MiB", "peak_rss_mib", ".0f"),
                                                ("samples.npy sha256", "samples_sha256", "")]),
        "Paper protocol": markdown_table(paper_rows, [("stage", "stage", ""), ("images", "images", "d"),
                                                      ("steps", "steps", "d"), ("seconds", "seconds", ".1f"),
                                                      ("peak RSS MiB", "peak_rss_mib", ".0f"), ("exit", "rc", "d")]),
        f"CIFAR-10 on an H200 at {args.fraction_of_peak:.0%} of its bf16 peak": markdown_table(
            h200, [("steps", "steps", "d"), ("GFLOP/img (forward)", "gflops_per_image", ".2f"),
                   ("seconds for 50,000", "seconds", ".0f")]),
    }
    write_results(args.out, "sample_stage", info, __doc__.split("\n\n")[0], sections,
                  {"processes": proc_rows, "paper": paper_rows, "h200": h200, "seconds": time.time() - started})
    shutil.rmtree(project / "outputs/sample" / f"{args.dataset}-{args.model}" / "partial", ignore_errors=True)


if __name__ == "__main__":
    main()
