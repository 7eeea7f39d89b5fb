"""Correlations of one score with memorability: Pearson, Spearman, and FDR across ROIs.

Every function drops missing values pairwise and reports how many rows it dropped; a constant
input or too few rows give NaN statistics with a ``reason`` instead of raising.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from neuromem.errors import InputError

CONFIDENCE = 0.95
"""Confidence level of every interval neuromem reports."""

N_BOOTSTRAP = 2000
"""Default number of bootstrap resamples for Spearman confidence intervals."""


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its test and interval.

    Attributes
    ----------
    n : int
        Rows used (both values present).
    n_dropped : int
        Rows dropped because a value was missing.
    r : float
        Coefficient (NaN when undefined).
    ci : tuple of float
        ``(low, high)`` confidence interval at :data:`CONFIDENCE`.
    p : float
        Two-sided p-value of r = 0.
    reason : str or None
        Why the coefficient is NaN, when it is.
    """

    n: int
    n_dropped: int
    r: float
    ci: tuple[float, float]
    p: float
    reason: str | None = None
    ci_method: str | None = None

    def to_dict(self) -> dict:
        """JSON-able fields (``ci`` as a list)."""
        out = asdict(self)
        out["ci"] = list(self.ci)
        return out


def _undefined(n: int, n_dropped: int, reason: str) -> Correlation:
    return Correlation(n, n_dropped, np.nan, (np.nan, np.nan), np.nan, reason)


def pairwise_complete(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``x`` and ``y`` (float64) restricted to rows where both are finite, and rows dropped."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise InputError(f"expected two 1-D arrays of equal length; got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], int(keep.size - keep.sum())


def degenerate_reason(x: np.ndarray, y: np.ndarray, *, min_n: int = 3) -> str | None:
    """Why a correlation of complete ``x`` and ``y`` is undefined, or None when it is defined."""
    if x.size < min_n:
        return f"only {x.size} complete rows (at least {min_n} needed)"
    if np.ptp(x) == 0:
        return "the score is constant"
    if np.ptp(y) == 0:
        return "memorability is constant"
    return None


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two complete float64 vectors (centred first for accuracy)."""
    xc = x - x.mean()
    yc = y - y.mean()
    r = float(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)))
    return float(np.clip(r, -1.0, 1.0))


def r_to_p(r: float, dof: int) -> float:
    """Two-sided p-value of a (partial) correlation ``r`` by the t test with ``dof`` degrees."""
    if abs(r) == 1.0:
        return 0.0
    t = r * np.sqrt(dof / ((1.0 - r) * (1.0 + r)))
    return float(2.0 * special.stdtr(dof, -abs(t)))


def fisher_ci(r: float, n_eff: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Fisher-z interval of ``r``: ``tanh(atanh(r) ± z_crit / sqrt(n_eff - 3))``.

    ``n_eff`` is the number of rows for a correlation and rows minus covariates for a partial
    correlation. NaN when ``n_eff <= 3``.
    """
    if n_eff <= 3:
        return (np.nan, np.nan)
    z_crit = stats.norm.ppf(0.5 + confidence / 2.0)
    z = np.arctanh(r)
    half = z_crit / np.sqrt(n_eff - 3)
    return (float(np.tanh(z - half)), float(np.tanh(z + half)))


def pearson(x: np.ndarray, y: np.ndarray, *, confidence: float = CONFIDENCE) -> Correlation:
    """Pearson r of ``x`` with ``y``, Fisher-z CI and t-test p (missing values dropped pairwise).

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Values; NaN or inf rows are dropped.
    confidence : float
        Level of the interval.

    Returns
    -------
    Correlation
    """
    x, y, n_dropped = pairwise_complete(x, y)
    reason = degenerate_reason(x, y)
    if reason:
        return _undefined(x.size, n_dropped, reason)
    r = pearson_r(x, y)
    return Correlation(
        x.size, n_dropped, r, fisher_ci(r, x.size, confidence=confidence), r_to_p(r, x.size - 2)
    )


def _spearman_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ along ``axis`` (vectorised for :func:`scipy.stats.bootstrap`)."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / np.sqrt(
            (rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis)
        )


SPEARMAN_CI_METHODS = ("auto", "analytic", "bootstrap")
"""Ways to compute the Spearman interval (``--spearman-ci``)."""

ANALYTIC_MIN_N = 2000
"""``auto`` uses the analytic Spearman interval from this many rows on, the bootstrap below."""


def spearman_analytic_ci(rho: float, n: int, *, confidence: float = CONFIDENCE
                         ) -> tuple[float, float]:
    """Fisher-z interval of Spearman's ρ with the Bonett & Wright (2000) standard error.

    ``tanh(atanh(ρ) ± z · sqrt((1 + ρ²/2) / (n − 3)))``. Bonett & Wright (Psychometrika 65:23)
    show this interval keeps its nominal coverage for Spearman's ρ for n ≥ 10 and |ρ| ≤ 0.9
    (unlike Fisher's ``1/sqrt(n − 3)``, which is too narrow for ρ_s); ρ_s is invariant to
    monotone transforms of the margins, so non-normal margins do not change it. neuromem's test
    checks its coverage on simulated data with non-normal margins and ties, and its agreement
    with scipy's BCa bootstrap interval at n = 2,000.
    """
    if n < 4 or not np.isfinite(rho):
        return (np.nan, np.nan)
    rho = float(np.clip(rho, -0.999999, 0.999999))
    half = special.ndtri((1 + confidence) / 2) * np.sqrt((1 + rho**2 / 2) / (n - 3))
    z = np.arctanh(rho)
    return (float(np.tanh(z - half)), float(np.tanh(z + half)))


def spearman(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    ci_method: str = "auto",
) -> Correlation:
    """Spearman ρ with a confidence interval and the t-test p of :func:`scipy.stats.spearmanr`.

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Values; NaN or inf rows are dropped. Ties get average ranks.
    seed : int
        Seed of the bootstrap resampling.
    n_resamples : int
        Bootstrap resamples (0: no bootstrap interval; the analytic one needs none).
    confidence : float
        Level of the interval.
    ci_method : {"auto", "analytic", "bootstrap"}
        ``analytic``: :func:`spearman_analytic_ci`; ``bootstrap``: seeded paired BCa; ``auto``:
        analytic from :data:`ANALYTIC_MIN_N` rows on (where it agrees with BCa to 0.01 and the
        bootstrap would cost minutes per table), BCa below. ``Correlation.ci_method`` says which
        produced the interval.

    Returns
    -------
    Correlation

    Notes
    -----
    Why an analytic interval at large n: the BCa bootstrap re-ranks the data ``n_resamples``
    times per ROI (2,000 × 39 ROIs × 58,000 rows for LaMem, plus the jackknife of the
    acceleration), which made the default decomposition of LaMem take about 15 minutes on two
    cores; the analytic interval costs nothing and, at these sizes, differs from BCa by less
    than the interval's own Monte Carlo error. Up to :data:`EXACT_JACKKNIFE_MAX_N` rows the
    bootstrap is ``scipy.stats.bootstrap(..., paired=True, method="BCa",
    rng=default_rng(seed))``; above it the same resamples are drawn by scipy and the
    acceleration is estimated by a grouped jackknife over :data:`JACKKNIFE_GROUPS` random
    groups (Efron & Narasimhan 2020, ``bcaboot::bcajack``).
    """
    if ci_method not in SPEARMAN_CI_METHODS:
        raise InputError(f"Spearman interval method must be one of "
                         f"{', '.join(SPEARMAN_CI_METHODS)}, got {ci_method!r}")
    x, y, n_dropped = pairwise_complete(x, y)
    reason = degenerate_reason(x, y)
    if reason:
        return _undefined(x.size, n_dropped, reason)
    rho = float(np.clip(_spearman_statistic(x, y), -1.0, 1.0))
    analytic = ci_method == "analytic" or (ci_method == "auto" and x.size >= ANALYTIC_MIN_N)
    ci, method = (np.nan, np.nan), None
    if analytic:
        ci, method = spearman_analytic_ci(rho, x.size, confidence=confidence), "analytic"
    elif n_resamples:
        ci = _bca_interval(x, y, seed=seed, n_resamples=n_resamples, confidence=confidence)
        method = f"bca_bootstrap_{n_resamples}"
    return Correlation(x.size, n_dropped, rho, ci, r_to_p(rho, x.size - 2), ci_method=method)


EXACT_JACKKNIFE_MAX_N = 5000
"""Largest n whose Spearman BCa interval uses the exact leave-one-out jackknife (scipy's)."""

JACKKNIFE_GROUPS = 500
"""Groups of the grouped jackknife estimating the BCa acceleration for larger n."""


def _bca_interval(
    x: np.ndarray, y: np.ndarray, *, seed: int, n_resamples: int, confidence: float
) -> tuple[float, float]:
    exact = x.size <= EXACT_JACKKNIFE_MAX_N
    with np.errstate(invalid="ignore", divide="ignore"):
        res = stats.bootstrap(
            (x, y),
            _spearman_statistic,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa" if exact else "percentile",
            rng=np.random.default_rng(seed),
            batch=max(1, 2**22 // x.size),
        )
    if exact:
        return (float(res.confidence_interval.low), float(res.confidence_interval.high))
    theta_b = res.bootstrap_distribution
    theta = _spearman_statistic(x, y)
    z0 = special.ndtri((np.sum(theta_b < theta) + np.sum(theta_b <= theta)) / (2 * theta_b.size))
    groups = np.array_split(np.random.default_rng(seed).permutation(x.size), JACKKNIFE_GROUPS)
    theta_g = np.array([_spearman_statistic(np.delete(x, g), np.delete(y, g)) for g in groups])
    dev = theta_g.mean() - theta_g
    accel = np.sum(dev**3) / (6.0 * np.sum(dev**2) ** 1.5)
    z_lo, z_hi = special.ndtri((1 - confidence) / 2), special.ndtri((1 + confidence) / 2)
    alpha = [special.ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z))) for z in (z_lo, z_hi)]
    low, high = np.percentile(theta_b, [100 * alpha[0], 100 * alpha[1]])
    return (float(low), float(high))


def bh_fdr(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values stay NaN and do not count as tests.

    Parameters
    ----------
    p_values : array-like of shape (m,)

    Returns
    -------
    ndarray of shape (m,)
        ``q[i] = min_{j: p_j >= p_i} min(1, p_j m / rank_j)`` over the finite p-values.
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m:
        order = np.argsort(p[finite])
        scaled = p[finite][order] * m / np.arange(1, m + 1)
        q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
        q_finite = np.empty(m)
        q_finite[order] = np.minimum(q_sorted, 1.0)
        q[finite] = q_finite
    return q


def hemisphere_family(roi: str) -> str:
    """The FDR family of an ROI name: ``lh`` (``lh_*``), ``rh`` (``rh_*``) or ``bilateral``.

    A bilateral ROI overlaps its two hemisphere parts, so the three are not distinct tests of
    one family: q-values are computed within each family.
    """
    name = roi.removeprefix("roi_")
    return "lh" if name.startswith("lh_") else "rh" if name.startswith("rh_") else "bilateral"


def bh_fdr_by_family(p_values, families) -> np.ndarray:
    """Benjamini-Hochberg q-values computed separately within each family.

    Parameters
    ----------
    p_values : array-like of shape (m,)
        NaN p-values stay NaN and do not count.
    families : sequence of hashable, length m
        Family of each test (e.g. :func:`hemisphere_family` of its ROI).

    Returns
    -------
    ndarray of shape (m,)
    """
    p = np.asarray(p_values, dtype=np.float64)
    families = np.asarray(list(families), dtype=object)
    q = np.full(p.shape, np.nan)
    for family in dict.fromkeys(families):
        members = families == family
        q[members] = bh_fdr(p[members])
    return q
