"""FID, IS, KID and precision/recall through torch-fidelity on the feature backends: closed forms,
torch-fidelity's own numbers, the reference cache, the two feature networks, and orderings every sound
metric must respect."""

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
import yaml
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor
from torchvision.transforms.v2 import functional as TF

from diffusionlab import paths
from diffusionlab.config.params import parse_params
from diffusionlab.config.sections import EvaluateConfig
from diffusionlab.datasets import prepare_digits, save_prepared
from diffusionlab.errors import StageInputError, WeightsUnavailable
from diffusionlab.evaluation import metrics
from diffusionlab.evaluation.features import (
    CLASSIFIER_EXTRACTOR,
    ClassifierFeatureExtractor,
    classifier_backend,
    ensure_inception_weights,
    inception_backend,
    resolve_backends,
)
from diffusionlab.evaluation.metrics import (
    Reference,
    StreamingStatistics,
    draw_scores,
    extract,
    load_reference,
    precision_recall,
    save_reference,
)
from diffusionlab.nn.classifier import (
    ClassifierConfig,
    ResNetClassifier,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from diffusionlab.pipeline.reference import reference_stage
from diffusionlab.validation import replace

CPU = torch.device("cpu")
ALL = EvaluateConfig(isc_splits=1, kid_subsets=20)


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
    save_classifier(path, model, accuracy=accuracy(model, *images(99, n=200, with_labels=True), CPU), dataset="test")
    return path


@pytest.fixture(scope="module")
def backend(classifier_path):
    return classifier_backend(classifier_path)


def score(generated, reference, backend, cfg=ALL):
    """One draw of ``generated`` scored against the features of ``reference``."""
    ref = Reference.of(extract(reference, backend, cfg, CPU).features, reference.shape[1:])
    ref.check(generated)
    return draw_scores(extract(generated, backend, cfg, CPU), ref, cfg, with_inf=False)


def features_of(path, x):
    model, _ = load_classifier(path)
    with torch.no_grad():
        feats, logits = model(torch.from_numpy(x))
    return feats.double().numpy(), logits.double()


def test_fid_matches_the_frechet_distance_of_the_classifier_features(classifier_path, backend):
    a, b = images(1), images(2, shift=60)
    got = score(a, b, backend)
    fa, fb = features_of(classifier_path, a)[0], features_of(classifier_path, b)[0]
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert got["fid"] == pytest.approx(expected, rel=1e-4)
    assert got["fid"] > 0.01


def test_fid_of_a_set_against_itself_is_zero(backend):
    a = images(3)
    assert score(a, a, backend)["fid"] == pytest.approx(0.0, abs=1e-6)


def test_inception_score_is_exp_of_the_mean_kl_from_the_marginal(classifier_path, backend):
    a = images(4)
    got = score(a, images(5), backend)
    p = features_of(classifier_path, a)[1].softmax(1)
    kl = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()
    assert got["isc"] == pytest.approx(kl.exp().item(), rel=1e-6)
    assert 1.0 <= got["isc"] <= 4.0


def quadrants(seed, n):
    """K = 4 well-separated classes: class k lights quadrant k of an 8x8 image; faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    x = rng.integers(0, 40, (n, 1, 8, 8))
    for img, k in zip(x, labels):
        r, c = divmod(int(k), 2)
        img[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 255
    return x.astype(np.uint8), labels


def test_inception_score_of_k_well_separated_balanced_classes_approaches_k(tmp_path):
    x, labels = quadrants(0, 256)
    model, _ = train_classifier(ClassifierConfig(steps=250, batch_size=64, lr=1e-2, width=4, feature_dim=8), x,
                                labels, 4, CPU, progress=False)
    save_classifier(tmp_path / "k4.pt", model, accuracy=1.0, dataset="quadrants")
    held_out = quadrants(1, 200)[0]
    got = score(held_out, held_out, classifier_backend(tmp_path / "k4.pt"))["isc"]
    assert 3.8 < got <= 4.0
    one_class = held_out[quadrants(1, 200)[1] == 2]
    assert score(one_class, one_class, classifier_backend(tmp_path / "k4.pt"))["isc"] < 1.2


class Plain(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = torch.from_numpy(x)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_every_metric_equals_torch_fidelitys_own_through_the_reference_cache(backend, tmp_path):
    """The project extracts features once and reads the reference from its cache, never its own formula."""
    generated, reference = images(10), images(11, n=150, shift=20)
    save_reference(tmp_path / "ref.pt", Reference.of(extract(reference, backend, ALL, CPU).features,
                                                     reference.shape[1:]))
    read = draw_scores(extract(generated, backend, ALL, CPU), load_reference(tmp_path / "ref.pt"), ALL, with_inf=False)
    own = torch_fidelity.calculate_metrics(
        input1=Plain(generated), input2=Plain(reference),
        cuda=False, isc=True, fid=True, kid=True, prc=True, feature_extractor=CLASSIFIER_EXTRACTOR,
        feature_extractor_weights_path=str(backend.weights_path), isc_splits=1, kid_subsets=20,
        kid_subset_size=120, rng_seed=0, cache=False, save_cpu_ram=True, verbose=False)
    assert read == score(generated, reference, backend)
    assert read["fid"] == pytest.approx(own["frechet_inception_distance"], rel=1e-9)
    assert read["kid"] == own["kernel_inception_distance_mean"]
    assert read["isc"] == own["inception_score_mean"]
    assert (read["precision"], read["recall"]) == (own["precision"], own["recall"])


def test_precision_and_recall_from_cached_radii_in_several_blocks_equal_torch_fidelitys(monkeypatch, tmp_path):
    """The reference's k-NN radii, computed once a block of rows at a time, saved and read back: they are each row's
    k-th smallest distance to the others, and give torch-fidelity's precision and recall."""
    monkeypatch.setattr(metrics, "DISTANCE_BLOCK_ROWS", 7)
    g = torch.Generator().manual_seed(0)
    real, generated = torch.randn(90, 16, generator=g), 1.3 * torch.randn(40, 16, generator=g) + 0.4
    reference = Reference.of(real, (1, 4, 4))
    reference.knn_radii(3)
    save_reference(tmp_path / "ref.pt", reference)
    loaded = load_reference(tmp_path / "ref.pt")
    assert set(loaded.radii) == {3}
    torch.testing.assert_close(loaded.radii[3], torch.cdist(real, real).sort(dim=1).values[:, 3])
    own = prc_features_to_metric(generated, real, prc_neighborhood=3, save_cpu_ram=True, verbose=False)
    got = precision_recall(generated, loaded, 3)
    assert got == (own["precision"], own["recall"]) and 0 < got[0] < 1 and 0 < got[1] < 1
    assert precision_recall(real, loaded, 3) == (1.0, 1.0)  # every row lies in its own ball
    assert precision_recall(real + 100, loaded, 3) == (0.0, 0.0)
    with pytest.raises(StageInputError, match="prc_neighborhood = 3 need more than 3 images"):
        precision_recall(generated[:3], loaded, 3)


def test_reading_the_cache_never_rewrites_it_and_a_missing_cache_names_the_stage(backend, tmp_path):
    path = tmp_path / "cache" / "classifier.pt"
    save_reference(path, Reference.of(extract(images(13), backend, ALL, CPU).features, (1, 8, 8)))
    before = path.stat().st_mtime_ns
    load_reference(path)
    assert path.stat().st_mtime_ns == before
    with pytest.raises(StageInputError, match="dvc repro reference"):
        load_reference(tmp_path / "none" / "classifier.pt")


def test_metrics_are_deterministic_given_the_seed(backend):
    a, b = images(6), images(7)
    assert score(a, b, backend) == score(a, b, backend)


def test_only_the_enabled_metrics_are_computed(backend):
    got = score(images(6), images(7), backend, EvaluateConfig(isc=False, kid=False, prc=False))
    assert set(got) == {"fid"}


def test_mismatched_image_shapes_are_rejected(backend):
    with pytest.raises(StageInputError, match="differ in shape"):
        score(np.zeros((4, 1, 16, 16), np.uint8), images(1), backend)


def test_classifier_backend_is_registered_and_gives_features_of_the_documented_shapes(classifier_path):
    assert FEATURE_EXTRACTORS_REGISTRY[CLASSIFIER_EXTRACTOR] is ClassifierFeatureExtractor
    extractor = create_feature_extractor(CLASSIFIER_EXTRACTOR, ["features", "logits"], cuda=False,
                                         feature_extractor_weights_path=str(classifier_path))
    features, logits = extractor(torch.from_numpy(images(1, n=5)))
    assert features.shape == (5, 6) and logits.shape == (5, 4)  # [N, feature_dim], [N, num_classes]
    assert features.dtype == logits.dtype == torch.float32


def test_a_classifier_below_the_accuracy_threshold_is_refused(tmp_path, classifier_path):
    model, _ = load_classifier(classifier_path)
    save_classifier(tmp_path / "classifier.pt", model, accuracy=0.5, dataset="test")
    only = ("classifier",)
    with pytest.raises(StageInputError, match="0.5000 held-out accuracy, below evaluate.min_classifier_accuracy"):
        resolve_backends(EvaluateConfig(features=only, min_classifier_accuracy=0.95), tmp_path, timeout=1)
    (backend,) = resolve_backends(EvaluateConfig(features=only, min_classifier_accuracy=0.4), tmp_path, timeout=1)
    assert backend.identity == {"classifier_accuracy": 0.5}


def test_the_classifier_learns_separable_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    x = np.zeros((256, 1, 8, 8), np.uint8)
    x[labels == 1, :, :4] = 255  # class 1: top half lit
    x[labels == 0, :, 4:] = 255  # class 0: bottom half lit
    cfg = ClassifierConfig(steps=60, batch_size=64, lr=1e-2, width=4, feature_dim=8)
    model, _ = train_classifier(cfg, x, labels, 2, CPU, progress=False)
    assert accuracy(model, x, labels, CPU) > 0.95


# Orderings on real images (scikit-learn's bundled digits), for both backends


@pytest.fixture(scope="module")
def digits():
    return prepare_digits(16, 300, 0)


def degraded(real):
    """Uniform noise, and a blurred copy of the real images."""
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    return noise, TF.gaussian_blur(torch.from_numpy(real), [5, 5], [1.5, 1.5]).numpy()


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory, digits):
    """A weights file of torch-fidelity's InceptionV3 in its original format: random convolutions,
    batch-norm statistics measured on digits so that activations keep their scale."""
    torch.manual_seed(0)
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None):
        net = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(digits.train_images[:16]).repeat(1, 3, 1, 1))
    path = tmp_path_factory.mktemp("inception") / "weights-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def assert_real_scores_far_better_than_noise_and_blur(backend, digits, n_ref, n, tmp_path):
    cfg = EvaluateConfig(isc=False, kid=False, prc=False)
    reference = Reference.of(extract(digits.train_images[:n_ref], backend, cfg, CPU).features)
    real = draw_scores(extract(digits.test_images[:n], backend, cfg, CPU), reference, cfg, with_inf=False)["fid"]
    noise, blurred = degraded(digits.test_images[:n])
    worse = [draw_scores(extract(x, backend, cfg, CPU), reference, cfg, with_inf=False)["fid"] for x in (noise, blurred)]
    assert 0 <= real and all(fid > 2 * real for fid in worse), (real, worse)


def test_classifier_backend_scores_real_data_far_better_than_noise_and_blur(digits, tmp_path):
    model, _ = train_classifier(ClassifierConfig(steps=120, width=8, feature_dim=16), digits.train_images,
                                digits.train_labels, 10, CPU, progress=False)
    path = tmp_path / "digits.pt"
    save_classifier(path, model, accuracy(model, digits.test_images, digits.test_labels, CPU), "digits")
    assert_real_scores_far_better_than_noise_and_blur(classifier_backend(path), digits, 1000, 300, tmp_path)


def test_inception_backend_scores_real_data_far_better_than_noise_and_blur(digits, random_inception_weights,
                                                                          tmp_path):
    """Grayscale digits go in as uint8, repeated to the 3 channels InceptionV3 takes."""
    backend = inception_backend(random_inception_weights)
    assert backend.rgb and len(backend.identity["weights_sha256"]) == 64
    assert_real_scores_far_better_than_noise_and_blur(backend, digits, 32, 16, tmp_path)


# Inception weights: offline, corrupt, or carrying code

UNREACHABLE = "http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth"


def test_missing_inception_weights_offline_fail_at_once_naming_the_file_and_the_offline_backend(tmp_path):
    target = tmp_path / "weights" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(WeightsUnavailable) as err:
        ensure_inception_weights(target, timeout=2, url=UNREACHABLE)
    message = str(err.value)
    assert str(target) in message and "weights-inception-2015-12-05-6726825d.pth" in message
    assert "evaluate.inception_weights" in message and "evaluate.features: [classifier]" in message
    assert not (tmp_path / "weights").exists(), "nothing may be written when the download fails"


def test_a_weights_file_that_is_no_state_dict_or_carries_code_is_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="not a usable InceptionV3 weights file"):
        ensure_inception_weights(junk, timeout=1, url=UNREACHABLE)
    code = tmp_path / "code.pth"
    torch.save({"fc.weight": torch.zeros(1), "hook": Plain}, code)  # a class: only unpickled with code execution
    with pytest.raises(WeightsUnavailable, match="not a usable InceptionV3 weights file"):
        ensure_inception_weights(code, timeout=1, url=UNREACHABLE)


def test_reference_stage_without_inception_weights_fails_before_writing_anything(tmp_cwd, monkeypatch, digits,
                                                                                   classifier_path):
    monkeypatch.setattr("diffusionlab.evaluation.features.INCEPTION_URL", UNREACHABLE)
    save_prepared(digits, paths.prepared("digits"))
    save_classifier(paths.feature_network("digits", "classifier"), load_classifier(classifier_path)[0], 1.0, "digits")
    floor = paths.reference("digits") / "floor.json"
    floor.parent.mkdir(parents=True)
    floor.write_text('{"earlier": "result"}')
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["data"]["download_timeout"] = 2
    raw["evaluate"]["features"] = ["classifier", "inception"]
    params = parse_params(raw)
    with pytest.raises(WeightsUnavailable, match="evaluate.features: \\[classifier\\]"):
        reference_stage(params, "digits")
    assert floor.read_text() == '{"earlier": "result"}'
    assert sorted(p.name for p in floor.parent.iterdir()) == ["floor.json"]
    assert not Path("data/weights").exists()


def test_the_two_feature_networks_share_no_parameters_and_no_layer_design(digits):
    """The resnet backend is a second opinion: different layers, normalisation, downsampling, augmentation."""
    conv, _ = train_classifier(ClassifierConfig(steps=3, width=8, feature_dim=8), digits.train_images[:64],
                               digits.train_labels[:64], 10, CPU, progress=False)
    res, _ = train_classifier(ClassifierConfig(steps=3, width=8, feature_dim=8, seed=1), digits.train_images[:64],
                              digits.train_labels[:64], 10, CPU, progress=False, design="resnet")
    assert isinstance(res, ResNetClassifier)
    kinds = [{type(m) for m in net.modules()} for net in (conv, res)]
    assert {torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.Dropout} <= kinds[0]
    assert not kinds[1] & {torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.Dropout, torch.nn.ReLU}
    assert {torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.SiLU} <= kinds[1]
    shapes = [{tuple(p.shape) for p in net.parameters() if p.dim() > 1} for net in (conv, res)]
    for a in conv.parameters():
        for b in res.parameters():
            assert a.shape != b.shape or not torch.equal(a, b)
    assert shapes[0] != shapes[1]


def test_streamed_feature_statistics_equal_the_in_memory_ones_in_float64():
    rng = np.random.default_rng(0)
    rows = rng.normal(3.0, 2.0, (1003, 16)) @ rng.normal(size=(16, 16)) + 50.0  # correlated, far from zero mean
    stream = StreamingStatistics()
    for part in np.array_split(rows, [1, 7, 300, 301, 998]):  # uneven chunks, one of a single row
        stream.add(part)
    stats = stream.statistics()
    np.testing.assert_allclose(stats["mu"], rows.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats["sigma"], np.cov(rows, rowvar=False), rtol=0, atol=1e-10)
    with pytest.raises(StageInputError, match="at least 2 images"):
        StreamingStatistics().statistics()


def test_features_streamed_as_statistics_give_the_fid_and_is_of_the_features_held_in_memory(backend):
    cfg = EvaluateConfig(isc_splits=1, kid=False, prc=False, batch_size=16)  # 8 chunks
    reference = Reference.of(extract(images(1), backend, cfg, CPU).features)
    generated = images(2, shift=30)
    held = extract(generated, backend, cfg, CPU)
    streamed = extract(generated, backend, cfg, CPU, streamed=True)
    assert streamed.features is None and torch.equal(streamed.logits, held.logits)
    whole, light = draw_scores(held, reference, cfg, with_inf=False), draw_scores(streamed, reference, cfg)
    assert set(light) == {"fid", "isc"}  # no extrapolation to infinitely many images without the features
    assert light["fid"] == pytest.approx(whole["fid"], rel=1e-6) and light["isc"] == whole["isc"]


def test_the_paper_protocol_scores_one_streamed_draw_and_labels_what_it_is_comparable_with(backend, tmp_cwd):
    """The evaluate stage's scoring under ``evaluate.protocol: paper``: one draw, its features kept only as FID's
    statistics, no spread and no test against the floor; FID and IS as the features held in memory give them."""
    from diffusionlab.evaluation.features import Backend
    from diffusionlab.evaluation.metrics import floor_scores, reference_file
    from diffusionlab.families.registry import build_process
    from diffusionlab.pipeline.evaluate import Inputs, score
    from diffusionlab.runtime.checkpoint import Checkpoint
    from diffusionlab.runtime.factory import build_network

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["evaluate"].update(protocol="paper", ode_images=0, batch_size=32)
    raw["sample"].update(num_samples=120)
    run = parse_params(raw).run("digits", "ddpm")
    assert run.sample.draws == 1 and run.evaluate.features == ("inception",)
    cfg = replace(run.evaluate, isc_splits=2)  # a few images per split here
    run = run.model_copy(update={"evaluate": cfg})
    inception = Backend("inception", backend.extractor, backend.weights_path, rgb=False)  # the classifier's layers
    real, generated = images(1, n=240), images(2, shift=30)
    save_reference(reference_file("digits", "inception"), Reference.of(extract(real, inception, cfg, CPU).features,
                                                                       real.shape[1:]))
    reference = load_reference(reference_file("digits", "inception"))
    floor = {"num_reference": 240, "num_held_out": 120,
             "inception": floor_scores(extract(images(3), inception, cfg, CPU), 120, 1, reference, cfg)}
    np.save(tmp_cwd / "samples.npy", generated)
    card = {"steps": 50, "sampler": "ddpm", "num_samples": 120, "draws": 1, "sweep_steps": [], "guidance_sweep": [],
            "class_conditional": False, "guidance": None}
    process = build_process(run.model, CPU)
    net = build_network(run, 1, process).eval()
    ckpt = Checkpoint(run, 1, 0, net, net, process)
    held_out = np.zeros((4, 1, 16, 16), np.uint8)
    inputs = Inputs(card, {(50, None, None): tmp_cwd / "samples.npy"}, floor, ckpt, held_out, np.full(120, -1), None,
                    held_out)
    streamed = {((50, None, None), "inception"): extract(generated, inception, cfg, CPU, streamed=True)}
    metrics = score(run, [inception], inputs, CPU, streamed).metrics
    assert metrics["protocol"] == "paper" and metrics["comparable_with_published"] is False
    scores = metrics["inception"]
    assert {"fid", "isc", "fid_floor", "fid_floor_std"} <= set(scores)  # the floor keeps its bootstrap spread
    assert not {"fid_std", "isc_std", "fid_inf", "isc_inf", "kid", "precision"} & set(scores)
    assert "fid_vs_floor" not in scores and scores["draws"] == 1
    held = draw_scores(extract(generated, inception, cfg, CPU), reference, cfg, with_inf=False)
    assert scores["fid"] == pytest.approx(held["fid"], rel=1e-6) and scores["isc"] == held["isc"]
