"""Scores over independent draws: mean and spread, the FID_inf and IS_inf extrapolations, Welch's test of
a difference against the noise, the real-data floor's spread, and the compare command."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats

from diffusionlab.compare import Side, compare, from_metrics
from diffusionlab.config.sections import EvaluateConfig
from diffusionlab.errors import StageInputError
from diffusionlab.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    Features,
    Reference,
    extrapolate,
    fid,
    fit_inverse_n,
    floor_scores,
    inf_sizes,
    score_draws,
    split_draws,
)
from diffusionlab.evaluation.significance import Spread, spread_of, summarize, welch


def test_mean_and_spread_are_the_mean_and_sample_standard_deviation_of_the_draws():
    draws = [{"fid": 1.0, "isc": 9.0}, {"fid": 2.0, "isc": 9.5}, {"fid": 4.0, "isc": 8.5}]
    got = summarize(draws)
    assert got["fid"] == pytest.approx(7 / 3)
    assert got["fid_std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert got["isc"] == pytest.approx(9.0) and got["isc_std"] == pytest.approx(0.5)
    assert got["draws"] == 3
    assert spread_of(got, "fid") == Spread(got["fid"], got["fid_std"], 3, 2)
    with pytest.raises(ValueError, match="at least two draws"):
        Spread.of([1.0])


def test_draws_are_consecutive_equal_slices_and_an_uneven_split_is_refused():
    assert [i.tolist() for i in split_draws(6, 3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(Exception, match="do not split into 4 equal draws"):
        split_draws(6, 4)


def test_the_inverse_n_fit_recovers_intercept_and_slope_of_an_exact_line():
    sizes = inf_sizes(400, 8)
    assert sizes.min() == 200 and sizes.max() == 400 and len(sizes) == 8
    assert np.allclose(np.diff(1 / sizes), np.diff(1 / sizes).mean(), rtol=0.1)  # even in 1/N, but for rounding
    fit = fit_inverse_n(sizes, 3.0 + 50.0 / sizes)
    assert fit.value == pytest.approx(3.0) and fit.slope == pytest.approx(50.0) and fit.stderr < 1e-9


def gaussian_case(dim=16, seed=0):
    """Reference: the exact statistics of N(0, I); generated: N(mu, S) with a known Frechet distance."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 0.3, dim)
    a = rng.normal(0, 0.3, (dim, dim))
    cov = np.eye(dim) * 0.7 + a @ a.T / dim
    exact = float(mu @ mu + np.trace(np.eye(dim) + cov - 2 * scipy.linalg.sqrtm(cov).real))
    ref = Reference(torch.zeros(2, dim), {"mu": np.zeros(dim, np.float32), "sigma": np.eye(dim)})
    return ref, mu, cov, exact, rng


def test_fid_inf_recovers_the_known_distance_of_gaussian_features_where_fid_at_n_is_biased():
    """Ten Gaussian cases, each with eight draws of 300 features: the mean FID_inf over the draws lies within
    two standard errors of the closed-form distance in most cases, and far closer than FID at N, which the
    finite sample biases upwards by about tr(S)/N."""
    n, draws, within, errors_inf, errors_n = 300, 8, 0, [], []
    for seed in range(10):
        ref, mu, cov, exact, rng = gaussian_case(seed=seed)
        samples = torch.from_numpy(rng.multivariate_normal(mu, cov, n * draws).astype(np.float32))
        at_n, at_inf = [], []
        for d, i in enumerate(split_draws(n * draws, draws)):
            at_n.append(fid(samples[i], ref))
            at_inf.append(extrapolate(lambda j, x=samples[i]: fid(x[torch.from_numpy(j)], ref), n, 8, d).value)
        at_n, at_inf = Spread.of(at_n), Spread.of(at_inf)
        within += abs(at_inf.mean - exact) < 2 * at_inf.stderr
        errors_inf.append(abs(at_inf.mean - exact))
        errors_n.append(at_n.mean - exact)
    assert within >= 7, within
    assert min(errors_n) > 0 and np.mean(errors_inf) < np.mean(errors_n) / 2, (errors_inf, errors_n)


def test_is_inf_extrapolates_the_inception_score_of_a_known_class_distribution():
    """Logits of a known categorical mixture: as N grows the IS converges to exp(mutual information)."""
    rng = np.random.default_rng(1)
    k, n = 10, 400
    classes = rng.integers(0, k, n)
    logits = torch.from_numpy(np.eye(k)[classes] * 2.0 + rng.normal(0, 1.0, (n, k)) * 0.1)
    from diffusionlab.evaluation.metrics import inception_score

    fit = extrapolate(lambda j: inception_score(logits[torch.from_numpy(j)], 1, 0), n, 8, 0)
    big = inception_score(torch.from_numpy(np.eye(k)[rng.integers(0, k, 20000)] * 2.0
                                           + rng.normal(0, 1.0, (20000, k)) * 0.1), 1, 0)
    assert abs(fit.value - big) < abs(inception_score(logits, 1, 0) - big) + 3 * fit.stderr


def test_welch_equals_scipys_unequal_variance_t_test():
    a, b = [1.0, 1.4, 0.9, 1.2], [2.0, 1.1, 1.8]
    d = welch(Spread.of(b), Spread.of(a))
    own = stats.ttest_ind(b, a, equal_var=False)
    assert d.t == pytest.approx(own.statistic) and d.p == pytest.approx(own.pvalue)
    assert d.change == pytest.approx(np.mean(b) - np.mean(a))


def fid_draws(shift, draws, seed, n=200, dim=6):
    """FID of ``draws`` independent draws of a Gaussian 'model' whose mean is off by ``shift``."""
    rng = np.random.default_rng(seed)
    ref = Reference(torch.zeros(2, dim), {"mu": np.zeros(dim, np.float32), "sigma": np.eye(dim)})
    return [fid(torch.from_numpy(rng.normal(0, 1, (n, dim)).astype(np.float32) + shift), ref) for _ in range(draws)]


def test_the_test_rejects_a_real_difference_and_not_two_draws_of_one_model():
    better, worse = fid_draws(0.0, 3, 0), fid_draws(0.25, 3, 1)
    assert welch(Spread.of(worse), Spread.of(better)).beyond_noise
    same = [welch(Spread.of(fid_draws(0.1, 3, 2 * s)), Spread.of(fid_draws(0.1, 3, 2 * s + 1))).beyond_noise
            for s in range(60)]
    assert sum(same) <= 8, "two sets of draws of one model must be called different about 5% of the time"


def test_a_bootstrap_floor_counts_as_one_draw_of_known_spread():
    floor = {"fid": 1.0, "fid_std": 0.2, "draws": 1, "spread": "bootstrap", "resamples": 20}
    assert spread_of(floor, "fid") == Spread(1.0, 0.2, 1, 19)
    assert spread_of(floor, "fid").stderr == 0.2


def random_features(n, seed, dim=5, k=4):
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(n, dim, generator=g), torch.randn(n, k, generator=g))


CFG = EvaluateConfig(isc_splits=2, kid_subsets=5, kid_subset_size=20, inf_sizes=4)


def test_the_floor_uses_disjoint_draws_when_the_held_out_split_has_them_and_the_bootstrap_otherwise():
    ref = Reference.of(random_features(200, 0).features)
    enough = floor_scores(random_features(130, 1), 40, 3, ref, CFG)
    assert enough["spread"] == "draws" and enough["draws"] == 3
    assert enough["fid"] == pytest.approx(np.mean([d["fid"] for d in score_draws(
        random_features(130, 1).subset(np.arange(120)), 3, ref, CFG)]))
    few = floor_scores(random_features(50, 2), 40, 3, ref, CFG)
    assert few["spread"] == "bootstrap" and few["draws"] == 1 and few["resamples"] == BOOTSTRAP_RESAMPLES
    first = random_features(50, 2).subset(np.arange(40))
    assert few["fid"] == pytest.approx(fid(first.features, ref)) and few["fid_std"] > 0


def metrics(fid_mean, fid_std, draws=3, accuracy=None):
    out = {"draws": draws, "classifier": {"fid": fid_mean, "fid_std": fid_std, "isc": 2.0, "isc_std": 0.1,
                                          "draws": draws, "fid_floor": 0.1}}
    if accuracy is not None:
        out.update(class_accuracy=accuracy, class_accuracy_std=0.01)
    return out


def test_compare_prints_each_scores_change_spread_and_verdict():
    base = Side("base", {("digits-ddpm", b): s for b, s in from_metrics(metrics(5.0, 0.2, accuracy=0.9)).items()})
    new = Side("new", {("digits-ddpm", b): s for b, s in from_metrics(metrics(3.0, 0.3, accuracy=0.9)).items()})
    table = compare(base, new, 0.05).set_index("score")
    assert list(table.index) == ["fid", "isc", "class_accuracy"]
    assert table.loc["fid", "change"] == pytest.approx(-2.0)
    assert table.loc["fid", "verdict"] == "better, beyond noise" and table.loc["fid", "p"] < 0.01
    assert table.loc["fid", "baseline"] == "5 ± 0.2" and table.loc["fid", "candidate"] == "3 ± 0.3"
    assert table.loc["isc", "verdict"] == "within noise" and table.loc["isc", "p"] == 1.0
    worse = Side("w", {("digits-ddpm", "classifier"): from_metrics(metrics(9.0, 0.2))["classifier"]})
    assert compare(base, worse, 0.05).set_index("score").loc["fid", "verdict"] == "worse, beyond noise"


def test_compare_refuses_models_of_different_budgets_unless_asked_and_then_names_both():
    base = Side("base", {("mnist-ddpm", b): s for b, s in from_metrics(metrics(5.0, 0.2)).items()},
                {"mnist-ddpm": "default"})
    cpu = Side("cpu", {("mnist-ddpm", b): s for b, s in from_metrics(metrics(9.0, 0.2)).items()},
               {"mnist-ddpm": "cpu"})
    with pytest.raises(StageInputError, match=r"mnist-ddpm ran at budget 'default' in base but mnist-ddpm at budget "
                                              r"'cpu' in cpu: .*--mixed-budgets"):
        compare(base, cpu, 0.05)
    table = compare(base, cpu, 0.05, mixed_budgets=True)
    assert set(table.budget) == {"default vs cpu"} and table.set_index("score").loc["fid", "change"] == 4.0
    assert "budget" not in compare(base, base, 0.05).columns
