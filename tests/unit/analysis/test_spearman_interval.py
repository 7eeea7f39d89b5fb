"""The Spearman interval at large n: coverage on simulated data, agreement with scipy's BCa."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from neuromem.analysis.correlation import (
    ANALYTIC_MIN_N,
    spearman,
    spearman_analytic_ci,
)
from neuromem.errors import InputError


def _sample(rng, n, r, *, ties):
    """Bivariate normal with Pearson r, non-normal margins (exp, cube) and optionally ties."""
    x, e = rng.standard_normal((2, n))
    y = r * x + np.sqrt(1 - r * r) * e
    x, y = np.exp(x), y**3  # monotone: ranks unchanged, margins far from normal
    if ties:
        y = np.digitize(y, np.quantile(y, np.linspace(0, 1, 8)[1:-1]))  # 7 levels: heavy ties
    return x, y


@pytest.mark.parametrize(("r", "ties"), [(0.0, False), (0.35, True), (0.7, False), (0.6, True)])
def test_analytic_interval_covers_the_true_rho_95_percent_of_the_time(r, ties):
    rng = np.random.default_rng(12)
    truth = stats.spearmanr(*_sample(rng, 2_000_000, r, ties=ties)).statistic  # population ρ_s
    n, replications, covered = 300, 600, 0
    for _ in range(replications):
        x, y = _sample(rng, n, r, ties=ties)
        low, high = spearman(x, y, ci_method="analytic").ci
        covered += low <= truth <= high
    assert 0.93 <= covered / replications <= 0.97


def test_auto_is_analytic_at_large_n_and_agrees_with_scipy_bca():
    rng = np.random.default_rng(3)
    x, y = _sample(rng, ANALYTIC_MIN_N, 0.3, ties=False)
    result = spearman(x, y, seed=0)  # auto
    assert result.ci_method == "analytic"
    bca = stats.bootstrap((x, y), _vector_spearman, paired=True, vectorized=True, method="BCa",
                          n_resamples=2000, rng=np.random.default_rng(0)).confidence_interval
    assert result.ci == pytest.approx((bca.low, bca.high), abs=0.01)
    small = spearman(x[:500], y[:500], seed=0, n_resamples=200)
    assert small.ci_method == "bca_bootstrap_200"  # below ANALYTIC_MIN_N: the bootstrap
    assert spearman(x, y, ci_method="bootstrap", n_resamples=0).ci_method is None
    with pytest.raises(InputError, match="one of auto"):
        spearman(x, y, ci_method="exact")


def _vector_spearman(a, b, axis=-1):
    """Spearman's ρ along ``axis``, as scipy's bootstrap calls a vectorised statistic."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    ra, rb = stats.rankdata(a, axis=-1), stats.rankdata(b, axis=-1)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def test_analytic_interval_formula():
    low, high = spearman_analytic_ci(0.5, 103)
    half = stats.norm.ppf(0.975) * np.sqrt((1 + 0.125) / 100)
    assert (low, high) == pytest.approx((np.tanh(np.arctanh(0.5) - half),
                                         np.tanh(np.arctanh(0.5) + half)))
    assert np.isnan(spearman_analytic_ci(0.5, 3)).all()
