"""FID evaluation throughput: images per second of feature extraction, the part of FID, IS, KID
and precision/recall that grows with the image count, for each feature backend, through
torch-fidelity as the evaluate stage calls it. Not a test: it measures and writes
benchmarks/results/features.{json,md}.

The classifier backend needs the dataset's trained classifier (the pipeline's classifier stage);
the inception backend needs torch-fidelity's InceptionV3 weights at evaluate.inception_weights.
A backend without them is listed as not measured. Each measurement runs in a fresh process, on
random uint8 images of the dataset's shape:

    python benchmarks/features.py --datasets digits --images 4000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from diffusionlab import paths
from diffusionlab.config.params import load_params
from diffusionlab.device import resolve_device
from diffusionlab.evaluation.features import NETWORK_BACKENDS, ImageArrayDataset, inception_backend, network_backend

from common import ROOT, isolated, machine, markdown_table, parse_args, peak_memory, sync, write_results

SHAPES = {"digits": (1, 16, 16), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def weights_path(name: str, dataset: str) -> Path:
    """Where the backend's network is read from."""
    os.chdir(ROOT)
    if name in NETWORK_BACKENDS:
        return paths.feature_network(dataset, name)
    return Path(load_params(ROOT / "params.yaml").evaluate.inception_weights)


def missing(name: str, dataset: str) -> str | None:
    """Why the backend cannot be measured here, or None."""
    path = weights_path(name, dataset)
    if path.is_file():
        return None
    if name in NETWORK_BACKENDS:
        return f"no trained {name} feature network at {path} (dvc repro classifier)"
    return f"no InceptionV3 weights at {path}"


def measure(spec: dict) -> dict:
    device = resolve_device(spec["device"])
    path = weights_path(spec["backend"], spec["dataset"])
    backend = network_backend(spec["backend"], path) if spec["backend"] in NETWORK_BACKENDS else inception_backend(path)
    cuda = device.type == "cuda"
    extractor = create_feature_extractor(backend.extractor, ["features"] if backend.name in NETWORK_BACKENDS else ["2048"],
                                         cuda=cuda, feature_extractor_weights_path=str(backend.weights_path))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec["images"], *SHAPES[spec["dataset"]]), dtype=np.uint8)
    bs = spec["batch_size"]

    def extract(n: int) -> None:
        get_featuresdict_from_dataset(ImageArrayDataset(images[:n], backend.rgb), extractor, bs, cuda, True, False)

    extract(min(bs, len(images)))  # warm-up: first calls, cuDNN autotuning
    sync(device)
    start = time.perf_counter()
    extract(len(images))
    sync(device)
    seconds = time.perf_counter() - start
    return {**spec, "images_per_second": len(images) / seconds, "seconds": seconds, **peak_memory(device)}


COLUMNS = [("backend", "backend", ""), ("dataset", "dataset", ""), ("images", "images", "d"),
           ("batch", "batch_size", "d"), ("images/s", "images_per_second", ".1f"), ("seconds", "seconds", ".1f"),
           ("peak RSS MiB", "peak_rss_mib", ",.0f"), ("peak GPU MiB", "peak_gpu_mib", ",.0f"),
           ("not measured", "missing", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--backends", nargs="+", choices=[*NETWORK_BACKENDS, "inception"],
                        default=[*NETWORK_BACKENDS, "inception"])
    parser.add_argument("--images", type=int, default=None, help="default: 5000 on CUDA, 2000 on the CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.batch_size")
    args = parse_args(parser, measure)
    if args is None:
        return
    device = resolve_device(args.device)
    images = args.images or (5000 if device.type == "cuda" else 2000)
    batch_size = args.batch_size or load_params(ROOT / "params.yaml").evaluate.batch_size
    rows = []
    for name in args.backends:
        # InceptionV3 resizes every image to 299 x 299: one dataset measures it
        for dataset in args.datasets if name in NETWORK_BACKENDS else args.datasets[:1]:
            spec = {"backend": name, "dataset": dataset, "images": images, "batch_size": batch_size,
                    "device": args.device}
            why = missing(name, dataset)
            result = isolated(__file__, spec) if why is None else None
            rows.append(result or {**spec, "missing": why or "failed"})
            print(f"{name} {dataset}: " + (f"{result['images_per_second']:.1f} images/s" if result
                                          else f"not measured: {rows[-1]['missing']}"), flush=True)
    write_results(args.out, "features", machine(device),
                  "Feature extraction for FID, IS, KID and precision/recall through torch-fidelity, each backend in a "
                  "fresh process on random images (InceptionV3 resizes to 299 x 299, so one dataset measures it).",
                  {"Feature extraction": markdown_table(rows, COLUMNS)}, {"results": rows})


if __name__ == "__main__":
    main()
