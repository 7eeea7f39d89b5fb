"""Read-outs from a representation: memorability by PLS (seed 001) and Brain-Score-style
neural predictivity (PLS, 10 splits, median Pearson over targets)."""

from __future__ import annotations

from collections.abc import Sequence
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
        means, Spearman-Brown corrected to the full repetition count: ``2r / (1 + r)``.
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
        values.append(2 * r / (1 + r))
    return np.nanmean(np.stack(values), axis=0)


@dataclass
class Predictivity:
    """Neural predictivity of one representation for ``T`` targets."""

    r_per_target: np.ndarray  # (T,) mean over splits of held-out Pearson r
    raw: float  # median over targets
    ceiling: float | None = None
    normalised: float | None = None  # raw / ceiling
    n_components: int = 25
    extra: dict = field(default_factory=dict)


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
    """Brain-Score-style neural predictivity of a representation.

    PLS with ``n_components`` (capped by the feature and training-row counts) fitted on 90 % of
    the stimuli, Pearson r per target on the held-out 10 %, averaged over ``n_splits`` random
    splits (stratified by ``stratify_n`` labels when given), median over targets. With a ceiling
    per target (e.g. :func:`split_half_ceiling`), ``normalised = raw / median(ceiling)``.
    """
    n = x_nf.shape[0]
    rng = np.random.default_rng(seed)
    r_splits = []
    for _ in range(n_splits):
        if stratify_n is None:
            order = rng.permutation(n)
            n_test = max(1, int(round(test_fraction * n)))
            test, train = order[:n_test], order[n_test:]
        else:
            test_parts = []
            for label in np.unique(stratify_n):
                members = rng.permutation(np.flatnonzero(stratify_n == label))
                test_parts.append(members[: max(1, int(round(test_fraction * len(members))))])
            test = np.concatenate(test_parts)
            train = np.setdiff1d(np.arange(n), test)
        k = max_components(len(train), x_nf.shape[1], n_components)
        pred = fit_pls(x_nf[train], responses_nt[train], k).predict(x_nf[test]).cpu().numpy()
        r_splits.append(_columnwise_pearson(pred, responses_nt[test]))
    r_t = np.nanmean(np.stack(r_splits), axis=0)
    raw = float(np.nanmedian(r_t))
    if ceiling_t is None:
        return Predictivity(r_t, raw, n_components=n_components)
    ceiling = float(np.nanmedian(ceiling_t))
    return Predictivity(r_t, raw, ceiling, raw / ceiling, n_components=n_components)


def unique_variance(
    targets_nt: np.ndarray, predictions_a_nt: np.ndarray, predictions_b_nt: np.ndarray
) -> np.ndarray:
    """Per-target partial correlation of targets with model A's predictions, controlling for
    model B's (seed 002's test of whether A explains variance B does not).

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


def lamem_splits(
    memberships_n: Sequence[str | None], *, part: str = "test"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LaMem's train/test splits as row indices, from each row's split memberships.

    Parameters
    ----------
    memberships_n : sequence of str or None, length N
        Per row, the comma-separated split files listing the image (the ``splits`` column of
        :func:`neuromem.data.lamem.list_lamem`, e.g. ``"test_1,train_2,val_3"``).
    part : {"test", "val"}
        Which held-out part to return as the second index array.

    Returns
    -------
    dict
        ``"{part}_k"`` → (rows of ``train_k``, rows of ``{part}_k``) for every ``k`` with both
        parts present, sorted by ``k``.
    """
    members: dict[str, list[int]] = {}
    for row, text in enumerate(memberships_n):
        for name in (text or "").split(","):
            if name:
                members.setdefault(name, []).append(row)
    splits = {}
    for name in sorted(members, key=lambda n: (n.partition("_")[2], n)):
        kind, _, k = name.partition("_")
        if kind == part and f"train_{k}" in members:
            splits[name] = (np.array(members[f"train_{k}"]), np.array(members[name]))
    return splits


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
