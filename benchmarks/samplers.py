"""Sampler benchmark: images per second and FID for each sampler and step count, on the models the
pipeline trained (run `make run` first). Not a test: it measures and writes

    benchmarks/results/samplers.json   every measurement, with the machine
    benchmarks/results/samplers.md     the same as a table

FID uses the classifier backend against the reference statistics the pipeline cached, at
`sample.num_samples` images, so it is comparable with the pipeline's own numbers.

    uv run --locked python benchmarks/samplers.py --models ddpm vlb --steps 10 20 50
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffusionlab import paths  # noqa: E402
from diffusionlab.checkpoint import load_checkpoint  # noqa: E402
from diffusionlab.config import load_params  # noqa: E402
from diffusionlab.device import device_name, resolve_device  # noqa: E402
from diffusionlab.evaluation import reference_cache, score  # noqa: E402
from diffusionlab.features import classifier_backend  # noqa: E402
from diffusionlab.generation import generate  # noqa: E402
from diffusionlab.guidance import ConditionalModel, network_evaluations, requested_labels  # noqa: E402
from diffusionlab.io import read_json, write_json  # noqa: E402
from diffusionlab.samplers import make_sampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", nargs="+", default=None, help="default: pipeline.models")
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpmpp_2m"])
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    os.chdir(ROOT)  # the pipeline's outputs are relative to the project root
    params = load_params(ROOT / "params.yaml")
    device = resolve_device(params.train.device)
    floor = read_json(paths.reference(args.dataset) / "floor.json")
    backend = classifier_backend(paths.classifier(args.dataset) / "classifier.pt")
    cache = reference_cache(args.dataset, backend.name)
    rows = []
    for model in args.models or list(params.pipeline.models):
        run = params.run(args.dataset, model)
        s = run.sample
        ckpt = load_checkpoint(paths.train(args.dataset, model) / "checkpoint.pt", device)
        size = ckpt.config.data.image_size
        labels = requested_labels(s.num_samples, s.classes, ckpt.ema.num_classes) if ckpt.ema.num_classes else None
        net = ConditionalModel(ckpt.ema, ckpt.process, ckpt.channels, s.guidance)
        for name in args.samplers:
            for steps in args.steps:
                cfg = dataclasses.replace(s, sampler=name, steps=steps, step_list=())
                sampler = make_sampler(cfg, ckpt.process, steps)
                start = time.perf_counter()
                images = generate(net, sampler, s.num_samples, (ckpt.channels, size, size), s.batch_size, device,
                                  s.seed, 2, labels).images
                seconds = time.perf_counter() - start
                fid = score(images, None, floor["num_reference"], backend,
                            dataclasses.replace(run.evaluate, isc=False, kid=False, prc=False), device, cache)["fid"]
                guidance = s.guidance if labels is not None else None
                rows.append({"model": model, "sampler": name, "steps": steps,
                             "network_evaluations": network_evaluations(steps, guidance),
                             "images_per_second": round(s.num_samples / seconds, 1), "fid": round(fid, 2)})
                print(rows[-1], flush=True)
    machine = {"device": device_name(device), "cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
               "num_samples": params.sample.num_samples, "fid_features": "classifier",
               "num_reference": floor["num_reference"], "dataset": args.dataset}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "samplers.json", {"machine": machine, "results": rows})
    lines = [f"Machine: {json.dumps(machine)}", "", "| model | sampler | steps | network evaluations | images/s | FID |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['network_evaluations']} | "
              f"{r['images_per_second']} | {r['fid']} |" for r in rows]
    (out / "samplers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
