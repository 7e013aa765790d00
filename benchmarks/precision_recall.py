"""Precision and recall's cost against a large reference: torch-fidelity's ``prc_features_to_metric``, which
computes the reference's k-NN radii on every call, against the evaluate stage's, which reads them from the
reference cache (computed once by the reference stage). Not a test: it measures, each in a fresh process, the
seconds and peak memory of one call of each, and of computing the radii once, on random features of the
backends' widths, and writes benchmarks/results/precision_recall.{json,md}:

    python benchmarks/precision_recall.py --reference 50000 --generated 300
"""

from __future__ import annotations

import argparse
import time

import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from diffusionlab.config.sections import EvaluateConfig
from diffusionlab.evaluation.metrics import Reference, precision_recall

from common import isolated, machine, markdown_table, parse_args, peak_memory, write_results

WIDTHS = {"classifier": 64, "resnet": 128, "inception": 2048}
"""Feature widths: the offline backends' (``classifier.feature_dim``, ``resnet.feature_dim``) and InceptionV3's pool
features."""


def measure(spec: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    width, k = WIDTHS[spec["backend"]], spec["k"]
    reference = torch.randn(spec["reference"], width, generator=g)
    generated = torch.randn(spec["generated"], width, generator=g)
    start = time.perf_counter()
    if spec["method"] == "torch-fidelity":
        prc_features_to_metric(generated, reference, prc_neighborhood=k, save_cpu_ram=True, verbose=False)
    elif spec["method"] == "radii once":
        Reference.of(reference).knn_radii(k)
    else:
        cached = Reference.of(reference)
        cached.knn_radii(k)
        start = time.perf_counter()
        precision_recall(generated, cached, k)
    return {**spec, "seconds": time.perf_counter() - start, **peak_memory(torch.device("cpu"))}


COLUMNS = [("backend", "backend", ""), ("reference", "reference", ",d"), ("generated", "generated", ",d"),
           ("what", "method", ""), ("seconds", "seconds", ".1f"), ("peak RSS MiB", "peak_rss_mib", ",.0f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=int, nargs="+", default=[50000])
    parser.add_argument("--generated", type=int, default=300)
    parser.add_argument("--backends", nargs="+", choices=list(WIDTHS), default=["classifier", "resnet"])
    args = parse_args(parser, measure)
    if args is None:
        return
    k = EvaluateConfig().prc_neighborhood
    rows = []
    for backend in args.backends:
        for n in args.reference:
            for method in ("torch-fidelity", "radii once", "cached radii"):
                spec = {"backend": backend, "reference": n, "generated": args.generated, "k": k, "method": method}
                result = isolated(__file__, spec)
                rows.append(result or {**spec, "seconds": None})
                print(f"{backend} {n} {method}: {rows[-1]['seconds']} s", flush=True)
    write_results(args.out, "precision_recall", machine(torch.device("cpu")),
                  "One precision/recall call against the reference, with torch-fidelity's function (the reference's "
                  "k-NN radii computed in the call) and with the radii cached by the reference stage; 'radii once' "
                  "is what the reference stage spends on them (the 'cached radii' row's peak memory includes computing "
                  "them). Random features, each row in a fresh process.",
                  {"Precision and recall": markdown_table(rows, COLUMNS)}, {"results": rows})


if __name__ == "__main__":
    main()
