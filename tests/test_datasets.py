"""Dataset preparation on small files in the original formats, made here, with their checksums."""

import gzip
import hashlib
import pickle
import struct
import sys
import time
import tarfile
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10, MNIST

from diffusionlab.datasets import (
    MIRROR_ENV,
    DataConfig,
    DatasetUnavailable,
    load_prepared,
    prepare,
    prepare_digits,
    save_prepared,
)
from diffusionlab.io import atomic_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cifar10_archive import class_colours, synthetic_images, write_archive  # noqa: E402


@pytest.fixture(autouse=True)
def no_mirror_from_the_shell(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: zero, zero, type code 0x08 (ubyte), ndim, big-endian int32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, array in arrays.items():
        (mirror / name).write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setattr(MNIST, "resources", [(name, md5(mirror / name)) for name in arrays])
    return mirror, arrays


def cifar_tarball(folder: Path, rng) -> tuple[Path, dict]:
    """A CIFAR-10 archive of 3 images per batch, written as the original is laid out (five training batches)."""
    labels = rng.integers(0, 10, 18)
    images = rng.integers(0, 256, (18, 3, 32, 32), dtype=np.uint8)
    path = write_archive(folder, (images[:15], labels[:15]), (images[15:], labels[15:]), CIFAR10_CLASSES)
    with tarfile.open(path) as tar:
        batches = {Path(m.name).name: pickle.load(tar.extractfile(m)) for m in tar.getmembers()}
    return path, batches


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _member_md5s(tarball: Path) -> dict[str, str]:
    with tarfile.open(tarball) as tar:
        return {Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers()}


@pytest.fixture
def cifar_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball, batches = cifar_tarball(mirror, np.random.default_rng(1))
    sums = _member_md5s(tarball)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(tarball))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": sums["batches.meta"]})
    return mirror, batches


def _prepare(name, tmp_path, mirror, image_size=28, timeout=5.0, **data):
    return prepare(name, image_size, tmp_path / "raw",
                   DataConfig(mirror=None if mirror is None else str(mirror), download_timeout=timeout, **data))


def test_mnist_is_read_from_a_mirror_folder_with_checksums(tmp_path, mnist_mirror):
    mirror, arrays = mnist_mirror
    data = _prepare("mnist", tmp_path, mirror)
    assert data.train_images.shape == (12, 1, 28, 28) and data.train_images.dtype == np.uint8
    assert np.array_equal(data.train_images[:, 0], arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte.gz"])
    assert (data.card.channels, data.card.num_classes, data.card.test_size) == (1, 10, 5)
    assert (tmp_path / "raw" / "mnist" / ".complete").is_file()


def test_mnist_can_be_resized_while_preparing(tmp_path, mnist_mirror):
    data = _prepare("mnist", tmp_path, mnist_mirror[0], image_size=32)
    assert data.train_images.shape == (12, 1, 32, 32) and data.card.image_size == 32


def test_mnist_with_a_corrupt_file_fails_its_checksum_and_leaves_nothing(tmp_path, mnist_mirror):
    mirror, _ = mnist_mirror
    path = mirror / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DatasetUnavailable) as err:
        _prepare("mnist", tmp_path, mirror)
    assert "could not download dataset 'mnist'" in str(err.value)
    assert "data.mirror" in str(err.value) and "pipeline.datasets=[digits]" in str(err.value)
    assert not (tmp_path / "raw" / "mnist").exists()
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_downloaded_file_corrupted_later_is_detected_and_downloaded_again(tmp_path, mnist_mirror, caplog):
    mirror, arrays = mnist_mirror
    _prepare("mnist", tmp_path, mirror)
    raw = tmp_path / "raw" / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    raw.write_bytes(raw.read_bytes()[:-10])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailable, match="could not download dataset 'mnist'"):
        _prepare("mnist", tmp_path, tmp_path / "empty")
    assert raw.is_file(), "the earlier download stays until a verified one replaces it"
    data = _prepare("mnist", tmp_path, mirror)
    assert "train-images-idx3-ubyte.gz fail their checksums" in caplog.text
    assert np.array_equal(data.train_images[:, 0], arrays["train-images-idx3-ubyte.gz"])


def test_unreachable_source_fails_fast_naming_dataset_source_and_remedy(tmp_path):
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
    with pytest.raises(DatasetUnavailable) as err:
        _prepare("cifar10", tmp_path, "http://127.0.0.1:9/", timeout=2.0)
    message = str(err.value)
    assert "cifar10" in message and "http://127.0.0.1:9/cifar-10-python.tar.gz" in message
    assert "DIFFUSIONLAB_DATA_MIRROR" in message and "cifar-10-python.tar.gz" in message


def test_mirror_that_is_neither_folder_nor_url_is_rejected(tmp_path):
    with pytest.raises(DatasetUnavailable, match="neither a URL nor an existing folder"):
        _prepare("mnist", tmp_path, tmp_path / "no-such-folder")


def test_environment_variable_overrides_the_mirror_param(tmp_path, mnist_mirror, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(mnist_mirror[0]))
    data = _prepare("mnist", tmp_path, "http://127.0.0.1:9/")
    assert len(data.train_images) == 12


@pytest.fixture
def t10k_mirror(tmp_path, monkeypatch):
    """A mirror holding only MNIST's two test-split files (labels ordered by class, as a sequential cut would
    show), with torchvision's checksums for them replaced by theirs and its training files' left as they are."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 6).astype(np.uint8)
    mirror = tmp_path / "t10k"
    mirror.mkdir()
    for name, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)):
        (mirror / name).write_bytes(gzip.compress(idx_bytes(array)))
    sums = {f.name: md5(f) for f in mirror.iterdir()}
    monkeypatch.setattr(MNIST, "resources", [(f, sums.get(f, m)) for f, m in MNIST.resources])
    return mirror, images, labels


def _standin(tmp_path, mirror, test_size=10, seed=0):
    return _prepare("mnist_t10k", tmp_path, mirror, split_seed=seed, t10k_test_size=test_size)


def test_the_mnist_stand_in_splits_the_test_files_by_a_seeded_draw_stratified_by_class(tmp_path, t10k_mirror):
    mirror, images, labels = t10k_mirror
    data = _standin(tmp_path, mirror)
    assert data.card.name == "mnist_t10k" and "stand-in" in data.card.source and "not MNIST's training" in data.card.source
    assert (data.card.train_size, data.card.test_size) == (50, 10)
    assert sorted(data.test_labels.tolist()) == list(range(10)), "one held-out image per class: stratified"
    index = {images[i].tobytes(): i for i in range(len(images))}
    for split_images, split_labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        rows = [index[x[0].tobytes()] for x in split_images]
        assert np.array_equal(labels[rows], split_labels), "each image keeps its label"
    together = [index[x[0].tobytes()] for x in np.concatenate([data.train_images, data.test_images])]
    assert sorted(together) == list(range(60)), "every test-split image is in exactly one of the two"
    again, other = _standin(tmp_path / "again", mirror), _standin(tmp_path / "other", mirror, seed=1)
    assert np.array_equal(again.test_images, data.test_images)
    assert not np.array_equal(other.test_images, data.test_images)


def test_the_stand_in_still_refuses_a_test_file_that_fails_torchvisions_checksum(tmp_path, t10k_mirror, monkeypatch):
    mirror, _, _ = t10k_mirror
    monkeypatch.setattr(MNIST, "resources", [(f, "0" * 32 if f.startswith("t10k-images") else m)
                                             for f, m in MNIST.resources])
    with pytest.raises(DatasetUnavailable, match=r"t10k-images-idx3-ubyte\.gz fails its checksum"):
        _standin(tmp_path, mirror)
    assert list((tmp_path / "raw").iterdir()) == []
    with pytest.raises(DatasetUnavailable, match=r"train-images-idx3-ubyte\.gz is missing"):
        _prepare("mnist", tmp_path, mirror)


def test_a_stand_in_that_would_hold_out_every_image_is_refused(tmp_path, t10k_mirror):
    with pytest.raises(DatasetUnavailable, match="data.t10k_test_size 60 holds out every one of the 60 images"):
        _standin(tmp_path, t10k_mirror[0], test_size=60)


def test_cifar10_is_read_from_its_pickled_batches(tmp_path, cifar_mirror):
    mirror, batches = cifar_mirror
    data = _prepare("cifar10", tmp_path, mirror, image_size=32)
    assert data.train_images.shape == (15, 3, 32, 32)
    first = batches["data_batch_1"]["data"][0].reshape(3, 32, 32)  # CIFAR stores planes R, G, B
    assert np.array_equal(data.train_images[0], first)
    assert data.test_labels.tolist() == batches["test_batch"]["labels"]
    assert data.card.class_names == list(CIFAR10_CLASSES) and data.card.channels == 3


def test_digits_are_the_bundled_scikit_learn_digits_upscaled():
    data = prepare_digits(image_size=16, test_size=297, seed=0)
    assert data.train_images.shape == (1500, 1, 16, 16) and data.test_images.shape == (297, 1, 16, 16)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() > 200
    assert np.bincount(data.test_labels).min() >= 25  # stratified: every class held out
    assert set(data.test_labels.tolist()) == set(range(10))
    again = prepare_digits(image_size=16, test_size=297, seed=0)
    assert np.array_equal(again.test_images, data.test_images)


def test_prepared_form_round_trips(tmp_path):
    data = prepare_digits(image_size=8, test_size=100, seed=1)
    save_prepared(data, tmp_path / "digits")
    loaded = load_prepared(tmp_path / "digits")
    assert loaded.card == data.card
    assert np.array_equal(loaded.train_images, data.train_images)
    assert np.array_equal(loaded.test_labels, data.test_labels)


def test_a_failed_write_keeps_the_previous_prepared_form(tmp_path):
    target = tmp_path / "digits"
    save_prepared(prepare_digits(image_size=8, test_size=100, seed=1), target)
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_dir(target) as tmp:
            (tmp / "train_images.npy").write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == before
    assert load_prepared(target).card.test_size == 100
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


@pytest.fixture
def synthetic_cifar(tmp_path):
    """A synthetic archive in CIFAR-10's format with its own MD5SUMS, torchvision's checksums left as they are."""
    rng = np.random.default_rng(3)
    labels = np.arange(30) % 10
    images = synthetic_images(labels, class_colours(rng), rng)
    mirror = tmp_path / "synthetic"
    write_archive(mirror, (images[:20], labels[:20]), (images[20:], labels[20:]))
    return mirror, images, labels


def test_own_files_in_cifar10s_format_are_checked_against_the_mirrors_md5sums(tmp_path, synthetic_cifar):
    mirror, images, labels = synthetic_cifar
    data = _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror")
    assert np.array_equal(data.train_images, images[:20]) and np.array_equal(data.test_labels, labels[20:])
    assert data.card.class_names == list(CIFAR10_CLASSES)
    assert "files of your own" in data.card.source and "not torchvision's checksums" in data.card.source


def test_own_files_are_refused_under_torchvisions_checksums_and_when_they_fail_their_own(tmp_path, synthetic_cifar):
    mirror, _, _ = synthetic_cifar
    with pytest.raises(DatasetUnavailable, match=r"cifar-10-python\.tar\.gz fails its checksum"):
        _prepare("cifar10", tmp_path, mirror, image_size=32)
    archive = mirror / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DatasetUnavailable, match=r"cifar-10-python\.tar\.gz fails its checksum"):
        _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror")
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("md5sums, message", [
    (None, r"MD5SUMS does not exist; write it with md5sum FILES > MD5SUMS"),
    ("", r"MD5SUMS states no checksum for cifar-10-python\.tar\.gz; add its line"),
    ("c0ffee  cifar-10-python.tar.gz\n", r"MD5SUMS:1 is not '<md5>  <file>'"),
])
def test_a_missing_or_incomplete_md5sums_is_refused_naming_the_fix(tmp_path, synthetic_cifar, md5sums, message):
    mirror, _, _ = synthetic_cifar
    if md5sums is None:
        (mirror / "MD5SUMS").unlink()
    else:
        (mirror / "MD5SUMS").write_text(md5sums)
    with pytest.raises(DatasetUnavailable, match=message):
        _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror")


def test_the_mirrors_own_checksums_need_a_mirror_folder(tmp_path):
    for mirror in (None, "http://127.0.0.1:9/"):
        with pytest.raises(DatasetUnavailable, match="point data.mirror at the folder holding your files"):
            _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror")


def test_own_mnist_files_are_read_with_md5sums_in_binary_mode_notation(tmp_path):
    rng = np.random.default_rng(4)
    mirror = tmp_path / "own"
    mirror.mkdir()
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 4, dtype=np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 2, dtype=np.uint8)}
    for name, array in arrays.items():
        (mirror / name).write_bytes(gzip.compress(idx_bytes(array)))
    (mirror / "MD5SUMS").write_text("".join(f"{md5(mirror / n)} *{n}\n" for n in arrays))
    data = _prepare("mnist", tmp_path, mirror, checksums="mirror")
    assert np.array_equal(data.test_images[:, 0], arrays["t10k-images-idx3-ubyte.gz"])
    assert data.card.source.startswith("files of your own in the format of MNIST")


def test_own_files_live_beside_the_verified_originals_and_never_replace_them(tmp_path, mnist_mirror, caplog):
    mirror, arrays = mnist_mirror
    (mirror / "MD5SUMS").write_text("".join(f"{md5(mirror / n)}  {n}\n" for n in arrays))
    _prepare("mnist", tmp_path, mirror)
    own = _prepare("mnist", tmp_path, mirror, checksums="mirror")
    again = _prepare("mnist", tmp_path, mirror)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["mnist", "mnist-own"]
    assert "fail their checksums" not in caplog.text, "switching between the two modes downloads nothing again"
    assert own.card.source.startswith("files of your own") and again.card.source.startswith("MNIST")


def test_the_card_names_the_mirror_the_environment_gave(tmp_path, synthetic_cifar, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(synthetic_cifar[0]))
    data = _prepare("cifar10", tmp_path, None, image_size=32, checksums="mirror")
    assert f"from {synthetic_cifar[0]}," in data.card.source


@pytest.mark.parametrize("md5sums, message", [
    ("\ufeff{sum}  cifar-10-python.tar.gz\n", None),
    ("{sum}  cifar-10-python.tar.gz\n{other}  cifar-10-python.tar.gz\n", "states two checksums for cifar-10"),
])
def test_md5sums_with_a_byte_order_mark_is_read_and_one_with_two_sums_for_a_file_refused(tmp_path, synthetic_cifar,
                                                                                         md5sums, message):
    mirror = synthetic_cifar[0]
    right = md5(mirror / "cifar-10-python.tar.gz")
    (mirror / "MD5SUMS").write_text(md5sums.format(sum=right, other="0" * 32), encoding="utf-8")
    if message is None:
        assert _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror").card.train_size == 20
    else:
        with pytest.raises(DatasetUnavailable, match=message):
            _prepare("cifar10", tmp_path, mirror, image_size=32, checksums="mirror")


def test_the_synthetic_archive_is_the_same_file_for_the_same_images_whenever_written(tmp_path, monkeypatch):
    labels = np.arange(12) % 10
    rng = np.random.default_rng(5)
    images = synthetic_images(labels, class_colours(rng), rng)
    sums, now = [], time.time()
    for folder, later in (("a", 0), ("b", 1000)):
        monkeypatch.setattr(time, "time", lambda: now + later)
        write_archive(tmp_path / folder, (images[:10], labels[:10]), (images[10:], labels[10:]))
        sums.append((tmp_path / folder / "MD5SUMS").read_text())
    assert sums[0] == sums[1] and sums[0].endswith("  cifar-10-python.tar.gz\n")


def test_the_synthetic_classes_look_alike_across_splits_and_unlike_each_other():
    """Both splits of the archive are drawn with one set of class colours: a nearest-mean classifier fitted on one
    split classifies the other."""
    rng = np.random.default_rng(6)
    colours = class_colours(rng)
    labels = np.arange(400) % 10
    train, test = synthetic_images(labels, colours, rng), synthetic_images(labels, colours, rng)
    means = np.stack([train[labels == c].reshape(-1, 3, 1024).mean((0, 2)) for c in range(10)])
    nearest = np.linalg.norm(test.reshape(-1, 3, 1024).mean(2)[:, None] - means[None], axis=2).argmin(1)
    assert (nearest == labels).mean() > 0.9
