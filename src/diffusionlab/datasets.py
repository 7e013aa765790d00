"""Datasets, downloaded through torchvision with its checksums and kept in a prepared form.

The prepared form of a dataset is a folder of uint8 arrays ([N, C, H, W] images and [N]
labels for the train and test splits) plus ``card.json`` describing it, so every later
stage reads it in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import Field

from .captions import Captions, save_captions
from .errors import DatasetUnavailable
from .io import atomic_dir, read_json, save_npy, socket_timeout, write_json
from .validation import Float, Section

log = logging.getLogger(__name__)
MIRROR_ENV = "DIFFUSIONLAB_DATA_MIRROR"
OFFLINE_DATASET = "digits"
DatasetName = Literal["digits", "mnist", "mnist_t10k", "cifar10"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
CLASS_NAMES = {**{name: [str(i) for i in range(10)] for name in ("digits", "mnist", "mnist_t10k")},
               "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
"""Each dataset's classes in label order (CIFAR-10's as torchvision names them)."""
NUM_CLASSES = {name: len(names) for name, names in CLASS_NAMES.items()}
STANDIN = "mnist_t10k"
"""MNIST's 10,000-image test split alone, split in two by class: a stand-in for MNIST where its training images
cannot be had (:func:`prepare_mnist_t10k`)."""
CHECKSUMS_FILE = "MD5SUMS"
MD5SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *](.+)")
"""A line of md5sum's output: the md5, a space, then a space (text mode) or ``*`` (binary mode) and the file."""
Checksums = Literal["torchvision", "mirror"]
ImageSize = Annotated[int, Field(ge=4, le=512)]
"""The side of the square images a dataset is prepared at (``datasets.<name>.image_size``)."""


class DataConfig(Section):
    """The ``data`` section: where the original files come from and how the offline digits are split."""

    mirror: str | None = None
    """Folder or URL holding the original archive files; ``DIFFUSIONLAB_DATA_MIRROR`` overrides it."""
    checksums: Checksums = "torchvision"
    """Whose checksums the archives must match: torchvision's (the original files), or ``mirror``: the mirror
    folder's own ``MD5SUMS`` (md5sum's format), for files of your own in the original format."""
    download_timeout: Float = Field(10.0, gt=0)
    digits_test_size: int = Field(300, ge=10, le=897)
    t10k_test_size: int = Field(2000, ge=10, le=5000)
    """Images of MNIST's test split that ``mnist_t10k`` holds out (stratified); the others train."""
    split_seed: int = Field(0, ge=0)
    captions: str | None = None
    """A file of your own captions, one line per image (the training split, then the test split), in place of the
    ones written from each image's label and measured attributes (:mod:`diffusionlab.captions`)."""


@dataclass(frozen=True)
class DatasetCard:
    name: str
    image_size: int
    channels: int
    num_classes: int
    class_names: list[str]
    train_size: int
    test_size: int
    source: str


@dataclass
class PreparedDataset:
    card: DatasetCard
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


SPLITS = ("train", "test")


def save_prepared(dataset: PreparedDataset, out_dir: str | Path, captions: Captions | None = None) -> None:
    """Write the prepared form (with its captions); the folder appears only once every file is written."""
    with atomic_dir(out_dir) as tmp:
        if captions is not None:
            save_captions(captions, tmp)
        for split in SPLITS:
            save_npy(tmp / f"{split}_images.npy", np.ascontiguousarray(getattr(dataset, f"{split}_images")))
            save_npy(tmp / f"{split}_labels.npy", getattr(dataset, f"{split}_labels").astype(np.int64))
        write_json(tmp / "card.json", asdict(dataset.card))


def load_prepared(path: str | Path) -> PreparedDataset:
    path = Path(path)
    if not (path / "card.json").is_file():
        raise FileNotFoundError(f"{path} holds no prepared dataset; run its prepare stage first (dvc repro)")
    arrays = {f"{s}_{k}": np.load(path / f"{s}_{k}.npy") for s in SPLITS for k in ("images", "labels")}
    return PreparedDataset(card=DatasetCard(**read_json(path / "card.json")), **arrays)


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [N, C, H, W] images to size x size (bilinear, antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    import torch  # on first use: preparing images of the stored size needs neither torch nor torchvision
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(torch.from_numpy(images), [size, size], antialias=True).numpy()


def _card(name: str, source: str, train: np.ndarray, test: np.ndarray, class_names: list[str]) -> DatasetCard:
    return DatasetCard(
        name=name,
        image_size=int(train.shape[-1]),
        channels=int(train.shape[1]),
        num_classes=len(class_names),
        class_names=class_names,
        train_size=int(train.shape[0]),
        test_size=int(test.shape[0]),
        source=source,
    )


def prepare_digits(image_size: int, test_size: int, seed: int) -> PreparedDataset:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn, upscaled, split stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    images = resize_uint8(images, image_size)
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, random_state=seed, stratify=labels)
    card = _card("digits", "scikit-learn load_digits (UCI optical recognition of handwritten digits)", x_tr, x_te,
                 [str(i) for i in range(10)])
    return PreparedDataset(card, x_tr, y_tr, x_te, y_te)


def _is_url(mirror: str) -> bool:
    return "://" in mirror


def _mirror_base(mirror: str) -> str:
    """A mirror as a base URL ending in '/'; a folder becomes its file:// URI."""
    if _is_url(mirror):
        return mirror.rstrip("/") + "/"
    folder = Path(mirror).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailable(
            f"data mirror '{mirror}' is neither a URL nor an existing folder; point data.mirror "
            f"(or {MIRROR_ENV}) at a folder or URL holding the original archive files"
        )
    return folder.resolve().as_uri() + "/"


def _torchvision_datasets():
    """torchvision.datasets, imported on first use (see :func:`diffusionlab.viz.images.torchvision_utils`)."""
    from torchvision import datasets

    return datasets


def _is_mnist(cls: type) -> bool:
    return issubclass(cls, _torchvision_datasets().MNIST)


def _check_integrity(path: Path, md5: str) -> bool:
    return _torchvision_datasets().utils.check_integrity(str(path), md5)


def read_checksums(mirror: str | None) -> dict[str, str]:
    """The md5 of each file named in a mirror folder's ``MD5SUMS`` (md5sum's format: ``<md5>  <file>``, or
    ``<md5> *<file>`` for binary mode)."""
    if mirror is None or _is_url(mirror):
        raise DatasetUnavailable(
            f"data.checksums: mirror reads the checksums from a mirror folder's {CHECKSUMS_FILE}, and data.mirror is "
            f"{'not set' if mirror is None else 'a URL'}; point data.mirror at the folder holding your files and "
            f"their {CHECKSUMS_FILE} (md5sum FILES > {CHECKSUMS_FILE}), or set data.checksums: torchvision")
    path = Path(mirror).expanduser() / CHECKSUMS_FILE
    if not path.is_file():
        raise DatasetUnavailable(f"data.checksums: mirror, and {path} does not exist; write it with md5sum FILES > "
                                 f"{CHECKSUMS_FILE} in {path.parent}, or set data.checksums: torchvision")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        found = MD5SUM_LINE.fullmatch(line.strip())
        if found is None:
            raise DatasetUnavailable(f"{path}:{number} is not '<md5>  <file>' (md5sum's format): {line!r}")
        md5, name = found[1].lower(), Path(found[2]).name
        if sums.get(name, md5) != md5:
            raise DatasetUnavailable(f"{path} states two checksums for {name} ({sums[name]} and {md5}, line "
                                     f"{number}); keep the one of the file in {path.parent}")
        sums[name] = md5
    return sums


def _own_md5(sums: dict[str, str], filename: str, mirror: str) -> str:
    if filename not in sums:
        raise DatasetUnavailable(f"{Path(mirror).expanduser() / CHECKSUMS_FILE} states no checksum for {filename}; "
                                 f"add its line (md5sum {filename} >> {CHECKSUMS_FILE})")
    return sums[filename]


def _dataset_class(name: str, data: DataConfig) -> type:
    """torchvision's class for the dataset (MNIST or CIFAR10), re-pointed at a mirror; for the stand-in, MNIST
    with only its test split's files; with ``data.checksums: mirror``, checked against the mirror's own sums.

    CIFAR-10's archive holds pickled batches that torchvision checks again once extracted; with the mirror's own
    sums, the archive's checksum alone vouches for them."""
    base = getattr(_torchvision_datasets(), {"mnist": "MNIST", STANDIN: "MNIST", "cifar10": "CIFAR10"}[name])
    attrs: dict = {}
    if name == STANDIN:
        attrs["resources"] = [(f, md5) for f, md5 in base.resources if f.startswith("t10k-")]
    if data.mirror is not None:
        url = _mirror_base(data.mirror)
        attrs |= {"mirrors": [url]} if _is_mnist(base) else {"url": url + base.filename}
    if data.checksums == "mirror":
        sums = read_checksums(data.mirror)
        if _is_mnist(base):
            wanted = attrs.get("resources", base.resources)
            attrs["resources"] = [(f, _own_md5(sums, f, data.mirror)) for f, _ in wanted]
        else:
            attrs |= {"tgz_md5": _own_md5(sums, base.filename, data.mirror),
                      "train_list": [[f, None] for f, _ in base.train_list],
                      "test_list": [[f, None] for f, _ in base.test_list], "meta": {**base.meta, "md5": None}}
    # Same class name: torchvision derives MNIST's folder layout from it.
    return type(base.__name__, (base,), {**attrs, "__module__": __name__}) if attrs else base


def _source(original: str, data: DataConfig) -> str:
    """The card's source: the original dataset, or files of the user's own in its format."""
    if data.checksums == "torchvision":
        return original
    return (f"files of your own in the format of {original}, from {data.mirror}, checked against its "
            f"{CHECKSUMS_FILE}, not torchvision's checksums of the originals")


def _archive_folder(cls: type, root: Path) -> Path:
    """Where torchvision looks for the downloaded archives: <root>/MNIST/raw for MNIST, <root> for CIFAR-10."""
    return root / cls.__name__ / "raw" if _is_mnist(cls) else root


def _resources(cls: type) -> list[tuple[str, str]]:
    """(original file name, md5) of each archive torchvision downloads for the class."""
    if _is_mnist(cls):
        return [(f, md5) for f, md5 in cls.resources]
    return [(cls.filename, cls.tgz_md5)]


def _urls(cls: type) -> list[str]:
    if _is_mnist(cls):
        return [m + f for m in cls.mirrors for f, _ in cls.resources[:1]]
    return [cls.url]


def _copy_from_folder(cls: type, folder: Path, dest: Path) -> None:
    """Copy the archives from a mirror folder and verify them with the class's checksums (torchvision's, or the
    mirror's own)."""
    dest.mkdir(parents=True, exist_ok=True)
    for filename, md5 in _resources(cls):
        source = folder / filename
        if not source.is_file():
            raise DatasetUnavailable(f"{source} is missing")
        shutil.copyfile(source, dest / filename)
        if not _check_integrity(dest / filename, md5):
            raise DatasetUnavailable(f"{source} fails its checksum (expected md5 {md5}): the file is corrupt or "
                                     f"truncated, or not the original (files of your own: data.checksums: mirror "
                                     f"and their {CHECKSUMS_FILE})")


def download(name: str, raw_root: str | Path, data: DataConfig) -> tuple[type, Path]:
    """Download a torchvision dataset into ``raw_root/name`` (``raw_root/<name>-own`` for files of the user's own,
    ``data.checksums: mirror``), verified by its checksums.

    The files are fetched into a temporary folder and moved into place only when every
    checksum matched, so an interrupted or corrupt download is never taken as complete. Files
    already in place are checked again each time; corrupt ones are downloaded again.
    """
    cls = _dataset_class(name, data)
    folder = name if data.checksums == "torchvision" else f"{name}-own"  # never replaces verified originals
    final = Path(raw_root) / folder
    if (final / ".complete").is_file():
        corrupt = [f for f, md5 in _resources(cls) if not _check_integrity(_archive_folder(cls, final) / f, md5)]
        if not corrupt:
            return cls, final
        log.warning("%s: %s fail their checksums (corrupt or truncated); downloading again", name, ", ".join(corrupt))
    tmp = Path(raw_root) / f".{folder}.download"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tried = _urls(cls)
    try:
        if data.mirror is not None and not _is_url(data.mirror):
            # torchvision cannot stream file:// URLs; with the verified archives in place it only extracts them.
            _copy_from_folder(cls, Path(data.mirror).expanduser(), _archive_folder(cls, tmp))
        with socket_timeout(data.download_timeout):
            cls(root=str(tmp), train=name != STANDIN, download=True)  # the stand-in has no train files
    except (RuntimeError, OSError, urllib.error.URLError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        files = ", ".join(f for f, _ in _resources(cls))
        raise DatasetUnavailable(
            f"could not download dataset '{name}': tried {', '.join(tried)}: {str(err).strip()}\n"
            f"Fix: point data.mirror in params.yaml (or the {MIRROR_ENV} environment variable) at a folder or "
            f"URL holding the original files ({files}), or run offline on the bundled dataset: "
            f"dvc exp run -S 'pipeline.datasets=[{OFFLINE_DATASET}]'"
        ) from None
    (tmp / ".complete").write_text("verified\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return cls, final


def prepare_mnist(raw_root: str | Path, data: DataConfig, image_size: int) -> PreparedDataset:
    cls, root = download("mnist", raw_root, data)
    splits = {}
    for split in SPLITS:
        ds = cls(root=str(root), train=split == "train", download=False)
        splits[split] = (resize_uint8(ds.data.numpy()[:, None], image_size), ds.targets.numpy())
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    source = _source("MNIST (LeCun, Cortes and Burges), torchvision", data)
    return PreparedDataset(_card("mnist", source, x_tr, x_te, [str(i) for i in range(10)]), x_tr, y_tr, x_te, y_te)


def prepare_mnist_t10k(raw_root: str | Path, data: DataConfig, image_size: int) -> PreparedDataset:
    """MNIST's test split (its two original files, verified by their checksums) split by a seeded draw
    stratified by class into ``10,000 - data.t10k_test_size`` training and ``data.t10k_test_size`` held-out
    images. The file is ordered (its first 5,000 images from NIST's training writers, its last 5,000 from its test
    writers): a sequential cut would put a shift between the two halves."""
    from sklearn.model_selection import train_test_split

    cls, root = download(STANDIN, raw_root, data)
    ds = cls(root=str(root), train=False, download=False)
    images, labels = resize_uint8(ds.data.numpy()[:, None], image_size), ds.targets.numpy().astype(np.int64)
    test_size, seed = data.t10k_test_size, data.split_seed
    if test_size >= len(labels):
        raise DatasetUnavailable(f"data.t10k_test_size {test_size} holds out every one of the {len(labels)} images "
                                 f"of {root}; hold out fewer")
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, random_state=seed, stratify=labels)
    source = _source(f"stand-in for MNIST: its test split (t10k, {len(labels):,} images) split {len(y_tr):,} train "
                     f"/ {len(y_te):,} held out, stratified by class, seed {seed}; not MNIST's training split", data)
    card = _card(STANDIN, source, x_tr, x_te, [str(i) for i in range(10)])
    return PreparedDataset(card, x_tr, y_tr, x_te, y_te)


def prepare_cifar10(raw_root: str | Path, data: DataConfig, image_size: int) -> PreparedDataset:
    cls, root = download("cifar10", raw_root, data)
    splits = {}
    for split in SPLITS:
        ds = cls(root=str(root), train=split == "train", download=False)
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW
        splits[split] = (resize_uint8(images, image_size), np.asarray(ds.targets))
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    card = _card("cifar10", _source("CIFAR-10 (Krizhevsky 2009), torchvision", data), x_tr, x_te, list(ds.classes))
    return PreparedDataset(card, x_tr, y_tr, x_te, y_te)


def prepare(name: str, image_size: int, raw_root: str | Path, data: DataConfig) -> PreparedDataset:
    """Build the prepared form of a dataset by name, with the ``data`` section's sources and splits
    (``DIFFUSIONLAB_DATA_MIRROR``, when set, in place of ``data.mirror``)."""
    data = data.model_copy(update={"mirror": os.environ.get(MIRROR_ENV) or data.mirror})
    if name == "digits":
        return prepare_digits(image_size, data.digits_test_size, data.split_seed)
    if name == "mnist":
        return prepare_mnist(raw_root, data, image_size)
    if name == STANDIN:
        return prepare_mnist_t10k(raw_root, data, image_size)
    if name == "cifar10":
        return prepare_cifar10(raw_root, data, image_size)
    raise ValueError(f"unknown dataset '{name}'; known: {', '.join(DATASET_NAMES)}")
