"""Write a synthetic archive in CIFAR-10's original format, with the MD5SUMS that states its own checksums.

For timing the pipeline on CIFAR-10's shapes and sizes where the real archive cannot be had: its images are
coloured noise whose hue and texture depend on the class, so the classifier and the models have something to learn,
but no score measured on them means anything for CIFAR-10.

    python benchmarks/cifar10_archive.py /tmp/cifar10-synthetic
    dvc exp run -S 'pipeline.datasets=[cifar10]' -S datasets.cifar10.budget=cpu \\
        -S data.mirror=/tmp/cifar10-synthetic -S data.checksums=mirror
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

FILENAME = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = 5


def class_colours(rng: np.random.Generator) -> np.ndarray:
    """[10, 3, 1, 1]: the mean colour of each class, drawn once for both splits."""
    return rng.uniform(40, 215, (len(CLASSES), 3, 1, 1))


def synthetic_images(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 3, 32, 32]: per class its colour and a grain (noise drawn at 4 << (class % 3) pixels and
    upsampled), plus per-pixel noise."""
    images = np.empty((len(labels), 3, 32, 32), np.uint8)
    for c in range(len(CLASSES)):
        rows = np.flatnonzero(labels == c)
        cells = 4 << (c % 3)
        field = rng.normal(0, 40, (len(rows), 3, cells, cells)).repeat(32 // cells, 2).repeat(32 // cells, 3)
        pixels = colours[c] + field + rng.normal(0, 10, field.shape)
        images[rows] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images


def _pickled(content: dict) -> bytes:
    return pickle.dumps(content, protocol=4)  # bytes as bytes, as the original's Python 2 pickles hold them


def write_archive(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  class_names: tuple[str, ...] = CLASSES) -> Path:
    """Write ``folder/cifar-10-python.tar.gz`` as the original is laid out: ``cifar-10-batches-py/`` holding five
    training batches, ``test_batch`` and ``batches.meta``, each a pickled dict whose ``data`` rows are 3,072 bytes
    (the red plane, then green, then blue, each row-major), and ``folder/MD5SUMS`` in md5sum's format.
    ``train`` and ``test`` are (uint8 [N, 3, 32, 32] images, [N] labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    members = {}
    for index, rows in enumerate(np.array_split(np.arange(len(train[1])), TRAIN_BATCHES), 1):
        members[f"data_batch_{index}"] = _batch(f"training batch {index} of {TRAIN_BATCHES}", train, rows)
    members["test_batch"] = _batch("testing batch 1 of 1", test, np.arange(len(test[1])))
    members["batches.meta"] = {"label_names": list(class_names), "num_cases_per_batch": len(train[1]) // TRAIN_BATCHES,
                               "num_vis": 3072}
    buffer = io.BytesIO()
    # mtime 0 in the gzip header: the same images give the same archive and MD5SUMS
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, content in members.items():
            payload = _pickled(content)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path = folder / FILENAME
    path.write_bytes(buffer.getvalue())
    (folder / "MD5SUMS").write_text(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {FILENAME}\n")
    return path


def _batch(label: str, split: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> dict:
    images, labels = split
    return {"batch_label": label, "labels": [int(y) for y in labels[rows]],
            "data": np.ascontiguousarray(images[rows].reshape(len(rows), 3072)),
            "filenames": [f"synthetic_{i}.png" for i in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    parser.add_argument("--test", type=int, default=10_000, help="test images (CIFAR-10: 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    colours = class_colours(rng)
    splits = []
    for n in (args.train, args.test):
        labels = np.arange(n) % len(CLASSES)
        rng.shuffle(labels)
        splits.append((synthetic_images(labels, colours, rng), labels))
    path = write_archive(args.folder, *splits)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) and {args.folder / 'MD5SUMS'}")


if __name__ == "__main__":
    main()
