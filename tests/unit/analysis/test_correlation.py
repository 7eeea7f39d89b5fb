"""ROI-level statistics checked against scipy, pingouin and statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from neuromem.analysis import (
    bh_fdr,
    partial_correlation,
    pearson,
    roi_statistics,
    spearman,
    within_category,
)
from neuromem.errors import InputError, UnknownNameError


@pytest.fixture(scope="module")
def frame():
    """Memorability driven by category plus a small ROI effect, with a covariate and NaNs."""
    rng = np.random.default_rng(1)
    n = 240
    category = rng.choice(["animal", "object", "scene"], n)
    offset = pd.Series(category).map({"animal": 0.5, "object": 0.0, "scene": -0.6}).to_numpy()
    age = rng.normal(30, 5, n)
    memorability = 0.6 + 0.1 * offset + 0.01 * rng.standard_normal(n)
    roi_a = 2.0 * offset + 0.3 * rng.standard_normal(n) + 0.02 * age
    roi_b = -memorability * 5 + rng.standard_normal(n)
    roi_a[[3, 17]] = np.nan
    memorability[[5]] = np.nan
    return pd.DataFrame(
        {
            "memorability": memorability,
            "category": category,
            "age": age,
            "roi_A": roi_a.astype(np.float32),
            "roi_B": roi_b.astype(np.float32),
            "roi_flat": np.ones(n, np.float32),
        }
    )


def test_pearson_matches_scipy_and_counts_dropped(frame):
    x, y = frame["roi_A"].to_numpy(float), frame["memorability"].to_numpy(float)
    got = pearson(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    ref = stats.pearsonr(x[ok], y[ok])
    assert got.n == ok.sum() and got.n_dropped == 3
    assert got.r == pytest.approx(ref.statistic, abs=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    np.testing.assert_allclose(got.ci, tuple(ref.confidence_interval(0.95)), atol=1e-12)


def test_constant_and_short_columns_give_nan_with_reason(frame):
    flat = pearson(frame["roi_flat"], frame["memorability"])
    assert np.isnan(flat.r) and np.isnan(flat.p) and "constant" in flat.reason
    short = spearman([1.0, 2.0, np.nan], [3.0, 1.0, 2.0])
    assert np.isnan(short.r) and "2 complete rows" in short.reason
    with pytest.raises(InputError, match="equal length"):
        pearson([1.0, 2.0], [1.0])


def test_spearman_matches_scipy_with_seeded_bca_bootstrap(frame):
    x, y = frame["roi_B"].to_numpy(float), frame["memorability"].to_numpy(float)
    got = spearman(x, y, seed=7, n_resamples=500)
    ok = np.isfinite(x) & np.isfinite(y)
    ref = stats.spearmanr(x[ok], y[ok])
    assert got.r == pytest.approx(ref.statistic, abs=1e-12)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-6)
    boot = stats.bootstrap(
        (x[ok], y[ok]),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=500,
        method="BCa",
        rng=np.random.default_rng(7),
    )
    np.testing.assert_allclose(got.ci, tuple(boot.confidence_interval), atol=1e-10)
    assert got.ci[0] < got.r < got.ci[1]
    assert spearman(x, y, seed=7, n_resamples=500) == got  # seeded


def test_bh_matches_statsmodels_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5, 0.001, 0.04])
    ok = np.isfinite(p)
    expected = multipletests(p[ok], method="fdr_bh")[1]
    q = bh_fdr(p)
    np.testing.assert_allclose(q[ok], expected, rtol=1e-12)
    assert np.isnan(q[2])
    np.testing.assert_allclose(q[ok], stats.false_discovery_control(p[ok]), rtol=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_partial_matches_pingouin(frame, method, monkeypatch):
    dummies = pd.get_dummies(frame["category"], drop_first=True, dtype=float)
    data = pd.concat([frame[["roi_A", "memorability", "age"]].astype(float), dummies], axis=1)
    monkeypatch.setitem(pg.options, "round.column.CI95", None)  # pingouin shows CIs to 2 decimals
    ref = pg.partial_corr(
        data=data, x="roi_A", y="memorability", covar=["age", *dummies.columns], method=method
    )
    got = partial_correlation(
        frame["roi_A"],
        frame["memorability"],
        categories=frame["category"].to_numpy(),
        covariates_nk=frame[["age"]].to_numpy(),
        method=method,
    )
    assert got.n == int(ref["n"].iloc[0]) and got.n_dropped == 3
    assert got.r == pytest.approx(float(ref["r"].iloc[0]), abs=1e-10)
    assert got.p == pytest.approx(float(ref["p_val"].iloc[0]), abs=1e-6, rel=1e-6)
    np.testing.assert_allclose(got.ci, ref["CI95"].iloc[0], atol=1e-6)


def test_category_control_removes_a_pure_category_effect(frame):
    """roi_A tracks memorability only through category: r is large, the partial r is not."""
    r = pearson(frame["roi_A"], frame["memorability"])
    part = partial_correlation(
        frame["roi_A"], frame["memorability"], categories=frame["category"].to_numpy()
    )
    assert r.r > 0.6 and r.p < 1e-10
    assert abs(part.r) < 0.2 and part.p > 0.01


def test_within_category_matches_scipy_per_group(frame):
    got = within_category(frame["roi_B"], frame["memorability"], frame["category"])
    assert list(got) == ["animal", "object", "scene"]
    for level, corr in got.items():
        rows = frame[frame["category"] == level].dropna(subset=["roi_B", "memorability"])
        ref = stats.pearsonr(rows["roi_B"], rows["memorability"])
        assert corr.n == len(rows)
        assert corr.r == pytest.approx(ref.statistic, abs=1e-10)
        assert corr.p == pytest.approx(ref.pvalue, rel=1e-6)


def test_roi_statistics_records(frame):
    records = roi_statistics(
        frame, ["roi_A", "roi_B", "roi_flat"], covariates=["age"], seed=3, n_resamples=200
    )
    assert [r["roi"] for r in records] == ["A", "B", "flat"]
    flat = records[2]
    assert flat["pearson_r"] is None and flat["pearson_q"] is None and "constant" in flat["reason"]
    q = multipletests([records[0]["pearson_p"], records[1]["pearson_p"]], method="fdr_bh")[1]
    assert [records[0]["pearson_q"], records[1]["pearson_q"]] == pytest.approx(list(q))
    assert set(records[1]["within_category"]) == {"animal", "object", "scene"}
    assert records[0]["partial_r"] is not None and len(records[0]["partial_ci"]) == 2
    done = []
    again = roi_statistics(frame, ["roi_A", "roi_B", "roi_flat"], covariates=["age"], seed=3,
                           n_resamples=200, on_roi=done.append)
    assert done == ["roi_A", "roi_B", "roi_flat"] and again == records  # progress only
    no_control = roi_statistics(frame, ["roi_B"], category=None, n_resamples=0)
    assert no_control[0]["partial_r"] is None and no_control[0]["within_category"] == {}
    assert no_control[0]["spearman_ci"] == [None, None]
    with pytest.raises(UnknownNameError, match="mem_score"):
        roi_statistics(frame, ["roi_A"], memorability="mem_score")
    with pytest.raises(InputError, match="numeric"):
        roi_statistics(frame, ["roi_A"], memorability="category")


def test_spearman_bca_grouped_jackknife_for_large_n(monkeypatch):
    """Above the exact-jackknife size the interval stays close to scipy's exact BCa."""
    from neuromem.analysis import correlation

    rng = np.random.default_rng(4)
    x = rng.standard_normal(800)
    y = 0.3 * x + rng.standard_normal(800) ** 3  # skewed, so the acceleration matters
    exact = spearman(x, y, seed=2, n_resamples=400)
    monkeypatch.setattr(correlation, "EXACT_JACKKNIFE_MAX_N", 500)
    grouped = spearman(x, y, seed=2, n_resamples=400)
    assert grouped.r == exact.r and grouped.ci != exact.ci
    np.testing.assert_allclose(grouped.ci, exact.ci, atol=2e-3)


def test_q_values_of_every_statistic_within_each_hemisphere_family(frame):
    """BH over bilateral, lh_ and rh_ ROIs separately (they overlap), for every statistic."""
    data = frame.assign(roi_lh_A=frame["roi_A"] * 0.9 + 0.01, roi_rh_A=frame["roi_B"] * 1.1,
                        roi_lh_B=frame["roi_B"] - 0.3, roi_rh_B=frame["roi_A"] + frame["roi_B"])
    rois = ["roi_A", "roi_lh_A", "roi_rh_A", "roi_B", "roi_lh_B", "roi_rh_B"]
    records = {r["roi"]: r for r in roi_statistics(data, rois, seed=1, n_resamples=200)}
    families = {"bilateral": ["A", "B"], "lh": ["lh_A", "lh_B"], "rh": ["rh_A", "rh_B"]}
    for statistic in ("pearson", "spearman", "partial"):
        for members in families.values():
            p = [records[m][f"{statistic}_p"] for m in members]
            expected = multipletests(p, method="fdr_bh")[1]
            assert [records[m][f"{statistic}_q"] for m in members] == pytest.approx(list(expected))
        pooled = multipletests([records[r.removeprefix("roi_")][f"{statistic}_p"] for r in rois],
                               method="fdr_bh")[1]
        assert [records[r.removeprefix("roi_")][f"{statistic}_q"] for r in rois] != \
            pytest.approx(list(pooled), rel=1e-6, abs=0)  # not one family of overlapping ROIs
    for level in ("animal", "object", "scene"):
        p = [records[m]["within_category"][level]["p"] for m in families["lh"]]
        q = [records[m]["within_category"][level]["q"] for m in families["lh"]]
        assert q == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
