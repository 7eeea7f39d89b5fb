"""Read-outs from a representation: memorability by PLS, and neural predictivity as Brain-Score
scores it.

Brain-Score conventions (Schrimpf et al. 2018), followed by :func:`neural_predictivity`:

- PLS regression with 25 components, 10 random 90/10 splits of the stimuli, stratified by
  category where category labels exist;
- per split, the Pearson r of each target (neuroid) on the held-out stimuli, then the *median
  over targets*; the raw score is the *mean over splits* of those medians (their standard
  deviation is the error);
- the ceiling-normalised score is ``raw / ceiling`` (Brain-Score's convention, both in units
  of r); ``(raw / ceiling)²`` is reported beside it as the fraction of explainable variance,
  the convention of studies that normalise R²;
- the ceiling of repeated measurements is the split-half reliability corrected to the full
  number of repetitions by Spearman-Brown (:func:`split_half_ceiling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from neuromem.representations.pls import fit_pls


def max_components(n_train: int, n_features: int, requested: int) -> int:
    """``requested`` capped by what PLS can fit: ``min(requested, n_train - 1, n_features)``."""
    return max(1, min(requested, n_train - 1, n_features))


def choose_n_components(
    x_nf: np.ndarray,
    y_n: np.ndarray,
    grid: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    *,
    n_folds: int = 5,
    seed: int = 0,
) -> int:
    """Component count maximising mean held-out Spearman ρ over ``n_folds`` folds of the
    training rows; candidates above ``min(n_fold_train - 1, F)`` are dropped."""
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(len(y_n)), n_folds)
    smallest_train = len(y_n) - max(len(f) for f in folds)
    candidates = sorted({max_components(smallest_train, x_nf.shape[1], k) for k in grid})
    scores = np.zeros(len(candidates))
    for fold in folds:
        train = np.setdiff1d(np.arange(len(y_n)), fold)
        for i, k in enumerate(candidates):
            pred = fit_pls(x_nf[train], y_n[train], k).predict(x_nf[fold])[:, 0].cpu().numpy()
            rho = stats.spearmanr(pred, y_n[fold]).statistic
            scores[i] += 0.0 if np.isnan(rho) else rho
    return candidates[int(np.argmax(scores))]


@dataclass
class MemorabilityReadout:
    """Spearman ρ of PLS memorability predictions on each split."""

    rho_per_split: dict[str, float]
    n_components_per_split: dict[str, int]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.rho_per_split.values())))

    @property
    def std(self) -> float:
        return float(np.std(list(self.rho_per_split.values()), ddof=1)) if len(
            self.rho_per_split) > 1 else 0.0


def memorability_readout(
    x_nf: np.ndarray,
    memorability_n: np.ndarray,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    grid: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    seed: int = 0,
) -> MemorabilityReadout:
    """Predict memorability from features with PLS on each (train, test) split.

    Parameters
    ----------
    x_nf : ndarray, shape (N, F)
    memorability_n : ndarray, shape (N,)
    splits : dict
        Split name → (train row indices, test row indices), e.g. LaMem's ``train_1/test_1`` ...
        ``train_5/test_5``.
    grid : tuple of int
        Candidate component counts, chosen per split by 5-fold CV inside its training rows.
    """
    rhos, comps = {}, {}
    for name, (train, test) in splits.items():
        k = choose_n_components(x_nf[train], memorability_n[train], grid, seed=seed)
        pred = fit_pls(x_nf[train], memorability_n[train], k).predict(x_nf[test])[:, 0]
        rhos[name] = float(stats.spearmanr(pred.cpu().numpy(), memorability_n[test]).statistic)
        comps[name] = k
    return MemorabilityReadout(rhos, comps)


def _columnwise_pearson(a_nt: np.ndarray, b_nt: np.ndarray) -> np.ndarray:
    a = a_nt - a_nt.mean(0)
    b = b_nt - b_nt.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def spearman_brown(r: np.ndarray, n_half_a: int, n_half_b: int, n_total: int) -> np.ndarray:
    """Reliability of the mean of ``n_total`` repetitions from the correlation of two halves.

    Under the classical model (each repetition = signal + independent noise, single-repetition
    reliability ``ρ``), the mean of ``m`` repetitions has reliability
    ``ρ_m = mρ / (1 + (m-1)ρ)`` and the means of two disjoint halves of sizes ``a`` and ``b``
    correlate at ``sqrt(ρ_a ρ_b)``. This solves ``r = sqrt(ρ_a ρ_b)`` for ``ρ`` and returns
    ``ρ_{n_total}``; with equal halves it is Spearman-Brown's ``2r / (1 + r)``, with unequal
    ones (an odd number of repetitions) it uses the actual sizes. Correlations ``r ≤ 0`` (no
    reliable signal) use the equal-halves formula.

    Parameters
    ----------
    r : ndarray
        Correlations between the two halves' means.
    n_half_a, n_half_b : int
        Repetitions in each half.
    n_total : int
        Repetitions of the full mean (usually ``n_half_a + n_half_b``).
    """
    r = np.asarray(r, dtype=np.float64)
    a, b = float(n_half_a), float(n_half_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = r**2
        quad = r2 * (a - 1) * (b - 1) - a * b  # < 0 for |r| < 1
        lin = r2 * (a + b - 2)
        rho = (-lin - np.sqrt(lin**2 - 4 * quad * r2)) / (2 * quad)
        half = n_total / 2.0
        rho = np.where(r > 0, rho, r / (half - (half - 1) * r))
        return n_total * rho / (1 + (n_total - 1) * rho)


def split_half_ceiling(repeats_rnt: np.ndarray, *, n_splits: int = 10, seed: int = 0) -> np.ndarray:
    """Per-target reliability ceiling from repeated measurements.

    Parameters
    ----------
    repeats_rnt : ndarray, shape (R, N, T)
        ``R ≥ 2`` repetitions of the responses of ``T`` targets to ``N`` stimuli.

    Returns
    -------
    ndarray, shape (T,)
        Mean over random half splits of the repetitions of the Pearson r between the two halves'
        means, corrected to the full repetition count by :func:`spearman_brown` with the
        halves' actual sizes (``R // 2`` and ``R - R // 2``).
    """
    rng = np.random.default_rng(seed)
    n_rep = repeats_rnt.shape[0]
    if n_rep < 2:
        raise ValueError(f"split-half ceiling needs at least 2 repetitions; got {n_rep}")
    values = []
    for _ in range(n_splits):
        order = rng.permutation(n_rep)
        half_a = repeats_rnt[order[: n_rep // 2]].mean(0)
        half_b = repeats_rnt[order[n_rep // 2:]].mean(0)
        r = _columnwise_pearson(half_a, half_b)
        values.append(spearman_brown(r, n_rep // 2, n_rep - n_rep // 2, n_rep))
    return np.nanmean(np.stack(values), axis=0)


#: How a normalised predictivity is defined, recorded beside the numbers.
NORMALISATION = {
    "normalised": "raw / ceiling (Brain-Score: both in units of Pearson r)",
    "normalised_squared": "(raw / ceiling)^2 (fraction of explainable variance)",
}


@dataclass
class Predictivity:
    """Neural predictivity of one representation for ``T`` targets (Brain-Score conventions).

    Attributes
    ----------
    r_per_target : ndarray, shape (T,)
        Mean over splits of each target's held-out Pearson r.
    raw : float
        Mean over splits of the per-split median over targets.
    raw_per_split : ndarray, shape (n_splits,)
        The per-split medians.
    error : float
        Standard deviation of ``raw_per_split`` (ddof 1; 0 for one split).
    ceiling : float or None
        Median over targets of the given ceiling.
    normalised : float or None
        ``raw / ceiling``.
    normalised_squared : float or None
        ``(raw / ceiling)²``.
    """

    r_per_target: np.ndarray
    raw: float
    raw_per_split: np.ndarray = field(default_factory=lambda: np.empty(0))
    error: float = 0.0
    ceiling: float | None = None
    normalised: float | None = None
    normalised_squared: float | None = None
    n_components: int = 25
    extra: dict = field(default_factory=dict)


def stratified_test_rows(labels_n: np.ndarray, test_fraction: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Test rows of one stratified split: ``round(test_fraction · n_c)`` (at least 1) per class.

    Parameters
    ----------
    labels_n : ndarray, shape (N,)
        Class label of each row; rows with a missing label (None, NaN, ``""``) form a class of
        their own.
    test_fraction : float
        Share of each class held out.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        Sorted int64 row indices.
    """
    labels = np.asarray(["" if _missing(v) else str(v) for v in labels_n])
    parts = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        parts.append(members[: max(1, int(round(test_fraction * len(members))))])
    return np.sort(np.concatenate(parts)).astype(np.int64)


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and np.isnan(value))


def neural_predictivity(
    x_nf: np.ndarray,
    responses_nt: np.ndarray,
    *,
    n_components: int = 25,
    n_splits: int = 10,
    test_fraction: float = 0.1,
    stratify_n: np.ndarray | None = None,
    ceiling_t: np.ndarray | None = None,
    seed: int = 0,
) -> Predictivity:
    """Brain-Score neural predictivity of a representation (see the module docstring).

    Parameters
    ----------
    x_nf : ndarray, shape (N, F)
        Representation of ``N`` stimuli.
    responses_nt : ndarray, shape (N, T)
        Responses of ``T`` targets.
    n_components : int
        PLS components (capped by the feature and training-row counts).
    n_splits : int
        Random train/test splits.
    test_fraction : float
        Share of the stimuli held out per split.
    stratify_n : ndarray, shape (N,) or None
        Category labels: each split holds out ``test_fraction`` of every category
        (:func:`stratified_test_rows`).
    ceiling_t : ndarray, shape (T,) or None
        Ceiling per target (e.g. :func:`split_half_ceiling`); its median normalises the score.
    seed : int
        Seed of the splits.
    """
    n = x_nf.shape[0]
    rng = np.random.default_rng(seed)
    r_splits = []
    for _ in range(n_splits):
        if stratify_n is None:
            order = rng.permutation(n)
            test = order[: max(1, int(round(test_fraction * n)))]
        else:
            test = stratified_test_rows(stratify_n, test_fraction, rng)
        train = np.setdiff1d(np.arange(n), test)
        k = max_components(len(train), x_nf.shape[1], n_components)
        pred = fit_pls(x_nf[train], responses_nt[train], k).predict(x_nf[test]).cpu().numpy()
        r_splits.append(_columnwise_pearson(pred, responses_nt[test]))
    r_st = np.stack(r_splits)
    with np.errstate(all="ignore"):
        medians_s = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.nan for r in r_st])
        r_t = np.nanmean(r_st, axis=0)
    raw = float(np.nanmean(medians_s)) if np.isfinite(medians_s).any() else float("nan")
    error = float(np.nanstd(medians_s, ddof=1)) if np.isfinite(medians_s).sum() > 1 else 0.0
    result = Predictivity(r_t, raw, medians_s, error, n_components=n_components)
    if ceiling_t is not None:
        result.ceiling = float(np.nanmedian(ceiling_t))
        result.normalised = raw / result.ceiling
        result.normalised_squared = result.normalised**2
    return result


def unique_variance(
    targets_nt: np.ndarray, predictions_a_nt: np.ndarray, predictions_b_nt: np.ndarray
) -> np.ndarray:
    """Per-target partial correlation of targets with model A's predictions, controlling for
    model B's: whether A explains variance of the targets that B does not.

    Returns
    -------
    ndarray, shape (T,)
        ``(r_ya − r_yb r_ab) / sqrt((1 − r_yb²)(1 − r_ab²))`` per target.
    """
    r_ya = _columnwise_pearson(targets_nt, predictions_a_nt)
    r_yb = _columnwise_pearson(targets_nt, predictions_b_nt)
    r_ab = _columnwise_pearson(predictions_a_nt, predictions_b_nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r_ya - r_yb * r_ab) / np.sqrt((1 - r_yb**2) * (1 - r_ab**2))


def cross_validated_predictions(
    x_nf: np.ndarray,
    y_nt: np.ndarray,
    *,
    n_components: int = 25,
    n_folds: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold PLS predictions ``(N, T)`` of ``y_nt`` from ``x_nf`` (``n_folds`` random folds,
    component count capped as in :func:`neural_predictivity`); the input of
    :func:`unique_variance`."""
    y = y_nt[:, None] if y_nt.ndim == 1 else y_nt
    rng = np.random.default_rng(seed)
    pred_nt = np.empty(y.shape, dtype=np.float64)
    for fold in np.array_split(rng.permutation(len(y)), n_folds):
        train = np.setdiff1d(np.arange(len(y)), fold)
        k = max_components(len(train), x_nf.shape[1], n_components)
        pred_nt[fold] = fit_pls(x_nf[train], y[train], k).predict(x_nf[fold]).cpu().numpy()
    return pred_nt
