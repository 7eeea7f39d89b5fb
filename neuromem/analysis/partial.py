"""Partial correlation controlling for category and numeric covariates; within-category correlation.

The category enters the model as one-hot columns with the first level dropped (so the intercept
plus ``L - 1`` columns span the ``L`` category means). The partial correlation is the Pearson
correlation of the residuals of ``x`` and ``y`` after least-squares regression on the intercept
and covariates; its p-value is the t test with ``n - k - 2`` degrees of freedom and its interval
the Fisher z interval with standard error ``1 / sqrt(n - k - 3)``, ``k`` covariate columns — the
definitions of :func:`pingouin.partial_corr`. The Spearman version ranks ``x``, ``y`` and the
numeric covariates first (ranking a 0/1 column changes nothing after regression).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from neuromem.analysis.correlation import CONFIDENCE, Correlation, fisher_ci, pearson, r_to_p
from neuromem.errors import InputError

METHODS = ("pearson", "spearman")


def category_dummies(categories: Sequence) -> tuple[np.ndarray, list[str]]:
    """One-hot columns of a categorical vector with the first level (sorted) dropped.

    Parameters
    ----------
    categories : sequence of shape (n,)
        Labels; missing labels (None/NaN) give NaN rows.

    Returns
    -------
    dummies_nl : ndarray of shape (n, L - 1)
        float64 indicators of levels 2..L.
    levels : list of str
        All L levels in sorted order (the first is the reference).
    """
    labels = pd.Series(np.asarray(categories, dtype=object))
    missing = labels.isna().to_numpy()
    levels = sorted(str(v) for v in labels[~missing].unique())
    as_str = labels.where(missing, labels.astype(str))
    dummies_nl = (
        np.column_stack([(as_str == level).to_numpy(dtype=np.float64) for level in levels[1:]])
        if len(levels) > 1
        else np.empty((len(labels), 0))
    )
    dummies_nl[missing] = np.nan
    return dummies_nl, levels


def _residualise(values_nc: np.ndarray, design_nk: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design_nk, values_nc, rcond=None)
    return values_nc - design_nk @ coef


def partial_correlation(
    x: np.ndarray,
    y: np.ndarray,
    *,
    categories: Sequence | None = None,
    covariates_nk: np.ndarray | None = None,
    method: str = "pearson",
    confidence: float = CONFIDENCE,
) -> Correlation:
    """Correlation of ``x`` and ``y`` controlling for a category and numeric covariates.

    Parameters
    ----------
    x, y : array-like of shape (n,)
        The score and memorability.
    categories : sequence of shape (n,), optional
        Category labels, entered as one-hot columns (first level dropped).
    covariates_nk : array-like of shape (n, k), optional
        Further numeric covariates.
    method : {"pearson", "spearman"}
        Spearman ranks x, y and the numeric covariates (average ties) before regressing.
    confidence : float
        Level of the interval.

    Returns
    -------
    Correlation
        Rows with any missing value are dropped (counted in ``n_dropped``). NaN with a reason
        when a variable is constant, the covariates explain x or y fully, or too few rows remain.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}; got {method!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise InputError(f"expected two 1-D arrays of equal length; got {x.shape} and {y.shape}")
    n_total = x.size
    columns = []
    if categories is not None:
        if len(categories) != n_total:
            raise InputError(f"categories have {len(categories)} rows; expected {n_total}")
        columns.append(category_dummies(categories)[0])
    if covariates_nk is not None:
        cov = np.asarray(covariates_nk, dtype=np.float64)
        cov = cov[:, None] if cov.ndim == 1 else cov
        if cov.ndim != 2 or cov.shape[0] != n_total:
            raise InputError(f"covariates must be (n={n_total}, k); got shape {cov.shape}")
        columns.append(cov)
    data_nc = np.column_stack([x, y, *columns])
    keep = np.isfinite(data_nc).all(axis=1)
    data_nc = data_nc[keep]
    n, n_dropped = int(keep.sum()), int(n_total - keep.sum())
    # covariates constant over the kept rows (a category absent after dropping) carry nothing
    varying = np.ptp(data_nc[:, 2:], axis=0) > 0 if n else np.zeros(data_nc.shape[1] - 2, bool)
    cov_nk = data_nc[:, 2:][:, varying]
    k = cov_nk.shape[1]
    undefined = Correlation(n, n_dropped, np.nan, (np.nan, np.nan), np.nan, None)
    if n - k < 3:
        return _with_reason(undefined, f"only {n} complete rows for {k} covariates (need {k + 3})")
    if np.ptp(data_nc[:, 0]) == 0 or np.ptp(data_nc[:, 1]) == 0:
        which = "the score" if np.ptp(data_nc[:, 0]) == 0 else "memorability"
        return _with_reason(undefined, f"{which} is constant")
    xy_n2 = data_nc[:, :2]
    if method == "spearman":
        xy_n2 = stats.rankdata(xy_n2, axis=0)
        cov_nk = stats.rankdata(cov_nk, axis=0)
    design = np.column_stack([np.ones(n), (cov_nk - cov_nk.mean(0)) / cov_nk.std(0)])
    xy_n2 = (xy_n2 - xy_n2.mean(0)) / xy_n2.std(0)
    resid_n2 = _residualise(xy_n2, design)
    ss = (resid_n2**2).sum(0)
    if (ss <= 1e-20 * n).any():
        which = "the score" if ss[0] <= 1e-20 * n else "memorability"
        return _with_reason(undefined, f"the covariates explain {which} completely")
    r = float(np.clip(resid_n2[:, 0] @ resid_n2[:, 1] / np.sqrt(ss[0] * ss[1]), -1.0, 1.0))
    return Correlation(
        n, n_dropped, r, fisher_ci(r, n - k, confidence=confidence), r_to_p(r, n - k - 2)
    )


def _with_reason(result: Correlation, reason: str) -> Correlation:
    return Correlation(result.n, result.n_dropped, result.r, result.ci, result.p, reason)


def within_category(
    x: np.ndarray, y: np.ndarray, categories: Sequence, *, confidence: float = CONFIDENCE
) -> dict[str, Correlation]:
    """Pearson correlation of ``x`` with ``y`` inside each category (sorted by label).

    Rows with a missing category are left out; within a category, missing values are dropped
    pairwise. A category with fewer than 3 complete rows or a constant variable gets NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    labels = pd.Series(np.asarray(categories, dtype=object))
    if len(labels) != x.size:
        raise InputError(f"categories have {len(labels)} rows; expected {x.size}")
    present = ~labels.isna().to_numpy()
    as_str = labels.astype(str).to_numpy()
    out = {}
    for level in sorted(set(as_str[present])):
        rows = present & (as_str == level)
        out[level] = pearson(x[rows], y[rows], confidence=confidence)
    return out
