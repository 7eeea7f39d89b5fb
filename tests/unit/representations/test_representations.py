"""Representation read-outs against their peers: sklearn's PLS, the Kornblith CKA formula, pingouin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats
from sklearn.cross_decomposition import PLSRegression

from neuromem.representations.cka import linear_cka
from neuromem.representations.pls import fit_pls
from neuromem.representations.readout import (
    memorability_readout,
    neural_predictivity,
    split_half_ceiling,
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
