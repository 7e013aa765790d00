"""Model against model from one run's outputs: each candidate's conditional FID per offline backend, class
accuracy and bits/dim next to its baseline's, their ratio and Welch's test over the draws, with the training
time and, when ``benchmarks/training.py`` has measured them, training images/s and FLOPs per image; a text model's
CLIP score and attribute adherence beside them. Not a test: it reads what ``dvc exp run`` wrote and prints a
Markdown table (docs/transformer-and-latent.md, docs/text.md).

    python benchmarks/backbones.py --dataset digits --pairs flow:flow_dit vdm:vdm_latent
    python benchmarks/backbones.py --pairs text_unet:text_mmdit text_unet:text_dit flow:text_unet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusionlab.evaluation.significance import spread_of, welch

from common import ROOT, markdown_table

BACKENDS = ("classifier", "resnet")


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def fid(scores: dict) -> str:
    return f"{scores['fid']:.3g} ± {scores['fid_std']:.2g}"


def row(outputs: Path, dataset: str, baseline: str, model: str, bench: dict, level: float) -> dict:
    """One model's scores, and its FIDs against the baseline's."""
    metrics = read(outputs / "evaluate" / f"{dataset}-{model}" / "metrics.json")
    if not metrics:
        raise SystemExit(f"{outputs}/evaluate/{dataset}-{model}/metrics.json is missing: run its evaluate stage")
    base = read(outputs / "evaluate" / f"{dataset}-{baseline}" / "metrics.json")
    train = read(outputs / "train" / f"{dataset}-{model}" / "train.json")
    out = {"model": model, "against": baseline if model != baseline else "",
           "train s": f"{train.get('train_seconds', float('nan')):.0f}", "steps": train.get("steps", "")}
    speed = bench.get(model, {})
    out["images/s"] = f"{speed['images_per_second']:.0f}" if speed else ""
    out["GFLOP/img"] = f"{speed['gflops_per_image']:.3f}" if speed else ""
    for backend in BACKENDS:
        scores = metrics.get(backend, {})
        out[f"FID {backend}"] = fid(scores) if "fid_std" in scores else ""
        mine, theirs = spread_of(scores, "fid"), spread_of(base.get(backend, {}), "fid")
        if model != baseline and mine and theirs:
            diff = welch(mine, theirs, level)
            verdict = "beyond noise" if diff.beyond_noise else "within noise"
            out[f"x {backend}"] = f"{scores['fid'] / base[backend]['fid']:.2f} ({verdict}, p={diff.p:.2g})"
        else:
            out[f"x {backend}"] = ""
    acc = metrics.get("class_accuracy")
    out["class accuracy"] = f"{acc:.3f} ± {metrics.get('class_accuracy_std', 0):.2g}" if acc is not None else ""
    if model != baseline and acc is not None:
        out["class accuracy"] += versus(metrics, base, "class_accuracy", level)
    if any("attributes" in m for m in (metrics, base)) or "clip_score" in metrics:
        out.update(adherence(metrics, base if model != baseline else {}, level))
    bound = metrics.get("bpd")
    out["bits/dim (bound)"] = f"{bound:.3f} ± {metrics['bpd_stderr']:.2g}" if bound is not None else ""
    bpd = metrics.get("bpd_ode")
    out["bits/dim (ODE)"] = f"{bpd:.3f} ± {metrics['bpd_ode_stderr']:.2g}" if bpd is not None else \
        ("of latents: not computed" if "likelihood" in metrics else "")
    return out


ADHERENCE = (("clip_score", "CLIP score"), ("thickness_r", "thickness r"), ("slant_r", "slant r"),
             ("thickness_gain", "thickness gain"), ("slant_gain", "slant gain"),
             ("thickness_gain_held_out", "thickness gain, held out"))
"""A text model's prompt-adherence scores (the evaluate stage's ``attributes``) shown beside its FID."""


def versus(mine: dict, theirs: dict, key: str, level: float) -> str:
    """`` (p=...)``: Welch's test of ``key`` against the baseline's over the draws, when both have it."""
    a, b = spread_of(mine, key), spread_of(theirs, key)
    if a is None or b is None:
        return ""
    diff = welch(a, b, level)
    return f" ({'beyond' if diff.beyond_noise else 'within'} noise vs baseline, p={diff.p:.2g})"


def adherence(metrics: dict, base: dict, level: float) -> dict:
    """Each prompt-adherence score, mean ± std over the draws, with Welch's test against ``base``."""
    mine = {**metrics.get("attributes", {}), "draws": metrics.get("draws")}
    theirs = {**base.get("attributes", {}), "draws": base.get("draws")}
    out = {}
    for key, label in ADHERENCE:
        source, other = (metrics, base) if key == "clip_score" else (mine, theirs)
        value = source.get(key)
        out[label] = "" if value is None else f"{value:.3g} ± {source.get(f'{key}_std', float('nan')):.2g}" + \
            versus(source, other, key, level)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--pairs", nargs="+", required=True, help="baseline:candidate model names")
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs", help="the run's outputs folder")
    parser.add_argument("--training", type=Path, default=ROOT / "benchmarks" / "results" / "training.json",
                        help="benchmarks/training.py's results, for images/s and FLOPs (optional)")
    parser.add_argument("--level", type=float, default=0.05)
    args = parser.parse_args()
    measured = read(args.training).get("results", [])
    bench = {r["model"]: r for r in measured if r.get("dataset") == args.dataset and r.get("mode") == "eager"}
    rows = []
    for pair in args.pairs:
        baseline, _, candidate = pair.partition(":")
        if not candidate:
            raise SystemExit(f"--pairs takes baseline:candidate, got {pair!r}")
        shown = {r["model"] for r in rows}
        rows += [row(args.outputs, args.dataset, baseline, m, bench, args.level) for m in (baseline, candidate)
                 if m not in shown]
    autoencoder = read(args.outputs / "autoencoder" / args.dataset / "metrics.json")
    print(markdown_table(rows, [(k, k, "") for k in rows[0]]))
    if autoencoder.get("trained"):
        scores = ", ".join(f"{b} {fid(autoencoder[b])}" for b in BACKENDS if b in autoencoder)
        print(f"\nAutoencoder (f = {autoencoder['factor']}, {autoencoder['latent_channels']} channels): "
              f"{autoencoder['train_seconds']:.0f} s of training; reconstructions of the held-out images: PSNR "
              f"{autoencoder['psnr']:.2f} dB, SSIM {autoencoder['ssim']:.4f}, FID {scores}.")


if __name__ == "__main__":
    main()
