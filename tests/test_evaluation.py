"""FID and IS through torch-fidelity on the classifier's features, checked against their closed forms."""

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusionlab.classifier import accuracy, load_classifier, save_classifier, train_classifier
from diffusionlab.config import ClassifierConfig
from diffusionlab.evaluation import fid_and_is

CPU = torch.device("cpu")


def images(seed, n=120, shift=0, with_labels=False):
    """Noise with a bright 3x3 square; the label is the quadrant of the square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, 1, 8, 8)) + shift
    corners = rng.integers(0, 6, (n, 2))
    for img, (r, c) in zip(x, corners):
        img[:, r : r + 3, c : c + 3] = 255
    labels = (corners[:, 0] >= 3) * 2 + (corners[:, 1] >= 3)
    x = np.clip(x, 0, 255).astype(np.uint8)
    return (x, labels) if with_labels else x


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    x, y = images(0, n=512, with_labels=True)
    cfg = ClassifierConfig(steps=80, batch_size=64, lr=1e-2, width=8, feature_dim=6)
    model, _ = train_classifier(cfg, x, y, 4, CPU, progress=False)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(path, model, accuracy=0.5, dataset="test")
    return path


def features_of(path, x):
    model, _ = load_classifier(path)
    with torch.no_grad():
        feats, logits = model(torch.from_numpy(x))
    return feats.double().numpy(), logits.double()


def test_fid_matches_the_frechet_distance_of_the_classifier_features(classifier_path):
    a, b = images(1), images(2, shift=60)
    got = fid_and_is(a, b, classifier_path, CPU, isc_splits=1)
    fa, fb = features_of(classifier_path, a)[0], features_of(classifier_path, b)[0]
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert got["fid"] == pytest.approx(expected, rel=1e-4)
    assert got["fid"] > 0.01


def test_fid_of_a_set_against_itself_is_zero(classifier_path):
    a = images(3)
    assert fid_and_is(a, a, classifier_path, CPU)["fid"] == pytest.approx(0.0, abs=1e-6)


def test_inception_score_is_exp_of_the_mean_kl_from_the_marginal(classifier_path):
    a = images(4)
    got = fid_and_is(a, images(5), classifier_path, CPU, isc_splits=1)
    p = features_of(classifier_path, a)[1].softmax(1)
    kl = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()
    assert got["inception_score_mean"] == pytest.approx(kl.exp().item(), rel=1e-6)
    assert 1.0 <= got["inception_score_mean"] <= 4.0
    assert got["inception_score_std"] == 0.0


def test_metrics_are_deterministic(classifier_path):
    a, b = images(6), images(7)
    assert fid_and_is(a, b, classifier_path, CPU, seed=3) == fid_and_is(a, b, classifier_path, CPU, seed=3)


def test_mismatched_image_shapes_are_rejected(classifier_path):
    with pytest.raises(ValueError, match="differ in shape"):
        fid_and_is(images(1), np.zeros((4, 1, 16, 16), np.uint8), classifier_path, CPU)


def test_classifier_learns_separable_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    x = np.zeros((256, 1, 8, 8), np.uint8)
    x[labels == 1, :, :4] = 255  # class 1: top half lit
    x[labels == 0, :, 4:] = 255  # class 0: bottom half lit
    cfg = ClassifierConfig(steps=60, batch_size=64, lr=1e-2, width=4, feature_dim=8)
    model, _ = train_classifier(cfg, x, labels, 2, CPU, progress=False)
    assert accuracy(model, x, labels, CPU) > 0.95
