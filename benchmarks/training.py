"""Training throughput: images per second of the training step for each dataset resolution and model
family, eager, channels-last and with torch.compile (fp32, and bf16 where the device computes it
natively), next to the network's forward and backward pass alone, with peak memory, the fraction of
the rate this machine measures for one large matrix product in the same precision, and, on CUDA, the
fraction of the device's data-sheet peak. Not a test: it measures and writes

    benchmarks/results/training.json   every measurement, with the machine
    benchmarks/results/training.md     the same as a table

Each measurement runs in a process of its own (its own peak memory, no compiled code carried over),
on random images of the dataset's size (a latent model: random latents of the autoencoder's, which the
train stage encodes once, up front) with the model's backbone (U-Net or transformer, with its parameter
count and FLOPs per image) and the dataset's batch size from params.yaml:

    python benchmarks/training.py --datasets digits mnist --models ddpm vdm --modes eager
    python benchmarks/training.py --datasets mnist_t10k cifar10 --budget cpu --models ddpm vlb vdm

``--budget`` measures each dataset at that budget of its block (``datasets.<name>.budgets``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusionlab.config.params import NUM_CLASSES, parse_params
from diffusionlab.device import device_name, native_bf16, resolve_device
from diffusionlab.runtime.training import Trainer
from diffusionlab.validation import read_yaml, replace

from common import ROOT, isolated, machine, markdown_table, parse_args, peak_memory, sync, write_results

CHANNELS = {"digits": 1, "mnist": 1, "mnist_t10k": 1, "cifar10": 3}
MATMUL_SIZE = 2048
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks from the vendors' data sheets, matched on the device name."""


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def matmul_tflops(device: torch.device, precision: str, n: int = MATMUL_SIZE, repeats: int = 5, rounds: int = 3) -> float:
    """TFLOP/s of one n x n by n x n matrix product in ``precision`` on ``device`` (2 n^3 operations), the best of
    ``rounds`` timings of ``repeats`` products: the rate the training step's rate is a fraction of. Measured before
    the model is built, so that no compile worker or allocator state of the measurement weighs on it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    return 2 * n**3 / min(timed(lambda: a @ b, repeats, device) for _ in range(rounds)) / 1e12


def measure(spec: dict) -> dict:
    """One measurement: ``spec`` names the dataset, model block, mode, precision, batch size, steps and budget."""
    raw = read_yaml(ROOT / "params.yaml")
    if spec.get("budget"):
        raw["datasets"][spec["dataset"]]["budget"] = spec["budget"]
    run = parse_params(raw).run(spec["dataset"], spec["model"])
    device = resolve_device(spec["device"])
    matmul = matmul_tflops(device, spec["precision"])
    train = replace(run.train, compile=spec["mode"] == "compile", bf16=spec["precision"] == "bf16",
                    channels_last=spec["mode"] == "channels_last")
    data = replace(run.data, batch_size=spec["batch_size"] or run.data.batch_size)
    run = replace(run, train=train, data=data)
    b, size = data.batch_size, run.model_size
    rng = np.random.default_rng(0)
    if run.autoencoder is not None:  # a latent model trains on the latents the stage encodes once, up front
        channels = run.autoencoder.latent_channels
        images = rng.standard_normal((4 * b, channels, size, size)).astype(np.float32)
    else:
        channels = CHANNELS[spec["dataset"]]
        images = rng.integers(0, 256, (4 * b, channels, size, size), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES[spec["dataset"]], 4 * b)
    trainer = Trainer(run, images, device, labels=labels if run.model.class_conditional else None)
    sync(device)
    start = time.perf_counter()
    trainer.train_step()  # includes torch.compile's compilation
    sync(device)
    first = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        trainer.train_step()
    step = timed(trainer.train_step, spec["steps"], device)

    net = trainer.forward_model
    x = torch.randn(b, channels, size, size, device=device)
    t = (torch.rand(b, device=device) if not run.model.discrete
         else torch.randint(0, run.model.timesteps, (b,), device=device))
    y = torch.as_tensor(labels[:b], device=device) if run.model.class_conditional else None

    def forward_backward() -> None:
        with trainer.autocasting():
            out = net(x, t, y) if y is not None else net(x, t)
        out.float().square().mean().backward()

    for _ in range(spec["warmup"]):
        forward_backward()
    network = timed(forward_backward, spec["steps"], device)
    with FlopCounterMode(display=False) as counter:
        out = trainer.model(x[:2], t[:2], y[:2] if y is not None else None)
        out.float().square().mean().backward()
    flops = counter.get_total_flops() / 2
    result = {**spec, "budget": run.data.budget, "device_name": device_name(device), "image_size": data.image_size,
              "input": "x".join(map(str, images.shape[1:])), "batch_size": b,
              "network": run.network, "parameters": sum(p.numel() for p in trainer.model.parameters()),
              "first_step_seconds": round(first, 3), "step_seconds": step, "images_per_second": b / step,
              "network_seconds": network, "step_over_network": step / network,
              "gflops_per_image": flops / 1e9, "achieved_tflops": flops * b / step / 1e12,
              "matmul_tflops": matmul, "fraction_of_matmul": flops * b / step / 1e12 / matmul, **peak_memory(device)}
    if device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in result["device_name"]), None)
        result["fraction_of_bf16_peak"] = result["achieved_tflops"] / peak if peak else None
    return result


COLUMNS = [("dataset", "dataset", ""), ("budget", "budget", ""), ("px", "image_size", "d"), ("model", "model", ""), ("network", "network", ""),
           ("input", "input", ""),
           ("parameters", "parameters", ",d"), ("mode", "mode", ""),
           ("precision", "precision", ""), ("batch", "batch_size", "d"), ("images/s", "images_per_second", ".1f"),
           ("step ms", "step_ms", ".1f"), ("fwd+bwd ms", "network_ms", ".1f"),
           ("step / fwd+bwd", "step_over_network", ".2f"), ("GFLOP/img", "gflops_per_image", ".3f"),
           ("TFLOP/s", "achieved_tflops", ".3f"), ("of matmul", "fraction_of_matmul", ".1%"),
           ("of bf16 peak", "fraction_of_bf16_peak", ".1%"),
           ("first step s", "first_step_seconds", ".1f"), ("peak RSS MiB", "peak_rss_mib", ",.0f"),
           ("peak GPU MiB", "peak_gpu_mib", ",.0f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="default: digits, mnist and cifar10 on CUDA; digits and mnist on the CPU")
    parser.add_argument("--models", nargs="+", default=["ddpm", "vlb", "vdm", "flow", "flow_dit"],
                        help="model blocks of params.yaml; flow and flow_dit: the same family on the U-Net and the "
                             "transformer")
    parser.add_argument("--modes", nargs="+", choices=["eager", "channels_last", "compile"],
                        default=["eager", "channels_last", "compile"],
                        help="channels_last: eager in the channels-last memory format (train.channels_last)")
    parser.add_argument("--budget", default=None,
                        help="measure each dataset at this budget of its block (default: the budget params.yaml names)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32, and bf16 where the device computes in it natively (CUDA, a CPU with "
                             "AVX-512 BF16 or AMX)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the dataset's train batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    args = parse_args(parser, measure)
    if args is None:
        return
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precisions = args.precisions or (["fp32", "bf16"] if native_bf16(device) else ["fp32"])
    datasets = args.datasets or (["digits", "mnist", "cifar10"] if cuda else ["digits", "mnist"])
    rows = []
    for dataset in datasets:
        for model in args.models:
            for mode in args.modes:
                for precision in precisions:
                    spec = {"dataset": dataset, "model": model, "mode": mode, "precision": precision,
                            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                            "device": args.device, "budget": args.budget}
                    result = isolated(__file__, spec)
                    if result is None:
                        continue
                    rows.append({**result, "step_ms": 1e3 * result["step_seconds"],
                                 "network_ms": 1e3 * result["network_seconds"]})
                    r = rows[-1]
                    print(f"{dataset} {model} {mode} {precision}: {r['images_per_second']:.1f} images/s "
                          f"(step / fwd+bwd {r['step_over_network']:.2f})", flush=True)
    write_results(args.out, "training", machine(device),
                  f"Training throughput: {args.steps} timed steps after {args.warmup} warm-up steps, each measurement "
                  "in a fresh process, on random images of each dataset's size with the model's backbone and the "
                  "dataset's batch size. GFLOP/img counts the forward and backward pass; 'of matmul' is the step's "
                  f"TFLOP/s over this machine's rate for one {MATMUL_SIZE} x {MATMUL_SIZE} matrix product in the same "
                  "precision.",
                  {"Training step": markdown_table(rows, COLUMNS)}, {"results": rows})


if __name__ == "__main__":
    main()
