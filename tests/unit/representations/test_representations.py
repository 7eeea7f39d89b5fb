"""Representation read-outs against their peers: sklearn's PLS, the CKA and HSIC formulas, pingouin,
and Brain-Score's conventions written out independently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats
from sklearn.cross_decomposition import PLSRegression

from neuromem.representations.cka import cka, debiased_linear_cka, linear_cka
from neuromem.representations.pls import fit_pls
from neuromem.representations.readout import (
    memorability_readout,
    neural_predictivity,
    spearman_brown,
    split_half_ceiling,
    stratified_test_rows,
    unique_variance,
)


def _kornblith_hsic_cka(x, y):
    """CKA written as in Kornblith et al. 2019, eq. (3): HSIC with the centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("shape", [(60, 8, 5), (20, 40, 30)])  # N > F and N < F branches
def test_linear_cka_matches_kornblith_formula(shape):
    n, f, g = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, f))
    y = x[:, : min(f, g)] @ rng.normal(size=(min(f, g), g)) + rng.normal(size=(n, g))
    assert linear_cka(x, y) == pytest.approx(_kornblith_hsic_cka(x, y), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    assert linear_cka(x @ q * 3.0 + 1.0, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert np.isnan(linear_cka(np.ones((n, f)), y))


@pytest.mark.parametrize("n_targets,n_components", [(1, 1), (1, 5), (4, 3), (6, 10)])
def test_pls_predictions_match_sklearn(n_targets, n_components):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 12)) @ rng.normal(size=(12, 12))
    y = x[:, :3] @ rng.normal(size=(3, n_targets)) + 0.5 * rng.normal(size=(80, n_targets))
    x_new = rng.normal(size=(15, 12))
    ours = fit_pls(x, y, n_components).predict(x_new).numpy()
    ref = PLSRegression(n_components=n_components, scale=False, max_iter=5000, tol=1e-14)
    ref.fit(x, y)
    np.testing.assert_allclose(ours, ref.predict(x_new).reshape(15, n_targets), rtol=1e-6, atol=1e-8)


def test_pls_refuses_too_many_components():
    with pytest.raises(ValueError, match="n_components"):
        fit_pls(np.zeros((10, 3)), np.zeros(10), 4)


def test_memorability_readout_finds_signal_and_not_noise():
    rng = np.random.default_rng(2)
    n = 300
    x = rng.normal(size=(n, 20))
    memorability = x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n)
    splits = {}
    for i in range(3):
        order = rng.permutation(n)
        splits[f"split_{i}"] = (order[:200], order[200:])
    readout = memorability_readout(x, memorability, splits, grid=(1, 2, 4))
    assert readout.mean > 0.8 and len(readout.rho_per_split) == 3
    shuffled = memorability_readout(x, rng.permutation(memorability), splits, grid=(1, 2, 4))
    assert abs(shuffled.mean) < 0.2


def _unbiased_hsic_cka(x, y):
    """Debiased CKA from Song et al. 2012's unbiased HSIC, written from the formula:
    HSIC1(K, L) = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
    K~ the Gram matrix with its diagonal set to zero."""
    n = x.shape[0]
    one = np.ones(n)

    def hsic(k, l_):
        k, l_ = k.copy(), l_.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l_, 0)
        return (np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l_ @ one) / (n * (n - 3))

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("shape", [(60, 8, 5), (20, 40, 30)])  # N > F and N < F branches
def test_debiased_cka_equals_the_unbiased_hsic_formula(shape):
    n, f, g = shape
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, f)) + 2.0  # not centred: the estimator must not depend on it
    y = x[:, : min(f, g)] @ rng.normal(size=(min(f, g), g)) + rng.normal(size=(n, g)) - 1.0
    assert debiased_linear_cka(x, y) == pytest.approx(_unbiased_hsic_cka(x, y), rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    assert debiased_linear_cka(x @ q * 3.0, y) == pytest.approx(debiased_linear_cka(x, y),
                                                                rel=1e-9)
    assert debiased_linear_cka(x, x) == pytest.approx(1.0)
    assert cka(x, y, "biased") == linear_cka(x, y) and cka(x, y) == debiased_linear_cka(x, y)
    assert np.isnan(debiased_linear_cka(np.ones((n, f)), y))


def test_debiased_cka_of_independent_representations_is_zero_at_every_width():
    rng = np.random.default_rng(6)
    n = 1000
    for width in (16, 64, 256, 1024, 4096):
        x, y = rng.normal(size=(n, width)), rng.normal(size=(n, width))
        assert abs(debiased_linear_cka(x, y)) < 0.05, width
    # plain CKA of the last pair is inflated by the width alone (the bias this fixes)
    assert linear_cka(x, y) > 0.3


def test_predictivity_is_mean_over_splits_of_the_median_over_targets():
    from sklearn.cross_decomposition import PLSRegression

    rng = np.random.default_rng(7)
    n, t = 120, 7
    x = rng.normal(size=(n, 10))
    y = x[:, :2] @ rng.normal(size=(2, t)) * rng.uniform(0.1, 2, t) + rng.normal(size=(n, t))
    result = neural_predictivity(x, y, n_components=3, n_splits=4, seed=11)
    # Brain-Score: per split, held-out Pearson r per target, median over targets; mean over splits
    split_rng = np.random.default_rng(11)
    medians = []
    for _ in range(4):
        order = split_rng.permutation(n)
        test, train = order[:12], np.sort(order[12:])
        pls = PLSRegression(n_components=3, scale=False, max_iter=5000, tol=1e-14)
        pred = pls.fit(x[train], y[train]).predict(x[test])
        medians.append(np.median([stats.pearsonr(pred[:, j], y[test, j]).statistic
                                  for j in range(t)]))
    np.testing.assert_allclose(result.raw_per_split, medians, rtol=1e-6)
    assert result.raw == pytest.approx(np.mean(medians), rel=1e-6)
    assert result.error == pytest.approx(np.std(medians, ddof=1), rel=1e-6)
    ceiled = neural_predictivity(x, y, n_components=3, n_splits=4, seed=11,
                                 ceiling_t=np.full(t, 0.8))
    assert ceiled.normalised == pytest.approx(result.raw / 0.8)
    assert ceiled.normalised_squared == pytest.approx((result.raw / 0.8) ** 2)


def test_stratified_splits_hold_out_the_share_of_every_category():
    labels = np.array(["object"] * 83 + ["scene"] * 17 + [None] * 5, dtype=object)
    rng = np.random.default_rng(0)
    for _ in range(5):
        test = stratified_test_rows(labels, 0.1, rng)
        counts = pd.Series(labels[test]).fillna("none").value_counts().to_dict()
        assert counts == {"object": 8, "scene": 2, "none": 1}  # round(0.1 n_c), at least 1
        assert len(set(test.tolist())) == len(test)


def test_spearman_brown_uses_the_actual_half_sizes():
    # equal halves: the classical 2r / (1 + r)
    r = np.array([-0.3, 0.0, 0.2, 0.7])
    np.testing.assert_allclose(spearman_brown(r, 2, 2, 4), 2 * r / (1 + r))
    # halves of 1 and 2 repetitions of a measure with single-repetition reliability rho:
    # r = sqrt(rho_1 rho_2), rho_m = m rho / (1 + (m - 1) rho), and the full mean has rho_3
    rho = 0.3
    rel = lambda m: m * rho / (1 + (m - 1) * rho)  # noqa: E731
    assert spearman_brown(np.sqrt(rel(1) * rel(2)), 1, 2, 3) == pytest.approx(rel(3))


def test_split_half_ceiling_is_unbiased_with_an_odd_number_of_repetitions():
    rng = np.random.default_rng(8)
    n, t, noise = 3000, 40, 1.5
    signal = rng.normal(size=(n, t))
    for n_rep in (3, 5):
        repeats = signal[None] + noise * rng.normal(size=(n_rep, n, t))
        expected = 1 / (1 + noise**2 / n_rep)  # reliability of the mean of n_rep repetitions
        ceiling = split_half_ceiling(repeats)
        assert np.mean(ceiling) == pytest.approx(expected, abs=0.006)
        if n_rep == 3:  # halves of 1 and 2: 2r/(1+r) treats them as equal and falls short
            half_a, half_b = repeats[:1].mean(0), repeats[1:].mean(0)
            r = np.array([stats.pearsonr(half_a[:, j], half_b[:, j]).statistic
                          for j in range(t)])
            assert expected - np.mean(2 * r / (1 + r)) > 0.01


def test_neural_predictivity_and_ceiling():
    rng = np.random.default_rng(3)
    n, t = 200, 30
    features = rng.normal(size=(n, 40))
    signal = features[:, :5] @ rng.normal(size=(5, t))
    repeats = signal[None] + rng.normal(size=(4, n, t)) * 2.0
    responses = repeats.mean(0)
    ceiling = split_half_ceiling(repeats)
    # theoretical reliability of the mean of 4 repeats: var(s) / (var(s) + 4/4) per target
    expected = signal.var(0) / (signal.var(0) + 1.0)
    np.testing.assert_allclose(np.median(ceiling), np.median(expected), atol=0.06)
    result = neural_predictivity(features, responses, n_components=5, ceiling_t=ceiling)
    assert 0.7 < result.raw <= 1.0
    assert result.normalised == pytest.approx(result.raw / np.median(ceiling))
    null = neural_predictivity(rng.normal(size=(n, 40)), responses, n_components=5)
    assert abs(null.raw) < 0.15


def test_unique_variance_matches_pingouin_partial_corr():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(100, 1)), rng.normal(size=(100, 1))
    y = a + b + rng.normal(size=(100, 1))
    ours = unique_variance(y, a + 0.2 * b, b)[0]
    frame = pd.DataFrame({"y": y[:, 0], "a": (a + 0.2 * b)[:, 0], "b": b[:, 0]})
    ref = pingouin.partial_corr(frame, x="a", y="y", covar="b")["r"].iloc[0]
    assert ours == pytest.approx(ref, abs=1e-12)
    assert ours == pytest.approx(stats.pearsonr(
        y[:, 0] - np.polyval(np.polyfit(b[:, 0], y[:, 0], 1), b[:, 0]),
        frame.a - np.polyval(np.polyfit(b[:, 0], frame.a, 1), b[:, 0])).statistic, abs=1e-10)
