"""Per-ROI statistics of a score table: the ``rois`` records of a decomposition's ``results.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from neuromem.analysis.correlation import (
    N_BOOTSTRAP,
    bh_fdr_by_family,
    hemisphere_family,
    pearson,
    spearman,
)
from neuromem.analysis.partial import partial_correlation, within_category
from neuromem.errors import InputError, UnknownNameError


def check_columns(available: Sequence[str], columns: Sequence[str], *, what: str = "table") -> None:
    """Raise :class:`UnknownNameError` naming the ``columns`` not in ``available``."""
    missing = [c for c in columns if c not in available]
    if missing:
        raise UnknownNameError(
            f"{what} has no column(s) {missing}; available: {list(available)}. Name the "
            "right ones with --memorability / --category / --covariates"
        )


def numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (missing → NaN); :class:`InputError` when it is not numeric."""
    try:
        return pd.to_numeric(frame[column], errors="raise").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"column {column!r} must be numeric: {exc}") from exc


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _json_ci(ci) -> list[float | None]:
    return [_json_float(ci[0]), _json_float(ci[1])]


def roi_statistics(
    frame: pd.DataFrame,
    rois: Sequence[str],
    *,
    memorability: str = "memorability",
    category: str | None = "category",
    covariates: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = N_BOOTSTRAP,
    spearman_ci: str = "auto",
    on_roi: Callable[[str], None] | None = None,
) -> list[dict]:
    """Correlation, partial correlation and within-category correlation of each ROI column.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table (ROI columns, memorability, optionally category and covariates).
    rois : sequence of str
        ROI columns (``roi_<NAME>``), in output order.
    memorability : str
        Memorability column.
    category : str or None
        Category column; None skips the category control and within-category correlations.
    covariates : sequence of str
        Further numeric columns controlled for in the partial correlation.
    seed : int
        Seed of the Spearman bootstrap.
    n_resamples : int
        Bootstrap resamples of the Spearman interval.
    spearman_ci : {"auto", "analytic", "bootstrap"}
        How the Spearman interval is computed (:func:`~neuromem.analysis.correlation.spearman`).
    on_roi : callable, optional
        Called with each ROI column once its statistics are done (progress).

    Returns
    -------
    list of dict
        One record per ROI with the keys of ``results.json`` (``roi`` without the ``roi_``
        prefix; vertex-level keys set to None), plus ``n_dropped`` and ``reason`` (why r is
        undefined, or None). ``partial_*`` are None when there is nothing to control for.
        Undefined numbers are None.
    """
    check_columns(
        list(frame.columns), [*rois, memorability, *([category] if category else []), *covariates]
    )
    y = numeric_column(frame, memorability)
    cats = None if category is None else frame[category].to_numpy(dtype=object)
    cov_nk = np.column_stack([numeric_column(frame, c) for c in covariates]) if covariates else None
    controlled = category is not None or bool(covariates)
    records = []
    for column in rois:
        x = numeric_column(frame, column)
        pr = pearson(x, y)
        sp = spearman(x, y, seed=seed, n_resamples=n_resamples, ci_method=spearman_ci)
        part = (
            partial_correlation(x, y, categories=cats, covariates_nk=cov_nk) if controlled else None
        )
        within = {} if cats is None else within_category(x, y, cats)
        records.append(
            {
                "roi": column.removeprefix("roi_"),
                "n": pr.n,
                "pearson_r": _json_float(pr.r),
                "pearson_ci": _json_ci(pr.ci),
                "pearson_p": _json_float(pr.p),
                "pearson_q": None,
                "spearman_r": _json_float(sp.r),
                "spearman_ci": _json_ci(sp.ci),
                "spearman_ci_method": sp.ci_method,
                "spearman_p": _json_float(sp.p),
                "spearman_q": None,
                "partial_r": None if part is None else _json_float(part.r),
                "partial_p": None if part is None else _json_float(part.p),
                "partial_q": None,
                "partial_ci": None if part is None else _json_ci(part.ci),
                "within_category": {
                    level: {"n": c.n, "r": _json_float(c.r), "p": _json_float(c.p)}
                    for level, c in within.items()
                },
                "frac_vertices_negative": None,
                "frac_vertices_positive": None,
                "spin_p_mean_r": None,
                "spin_p_coherence": None,
                "spin_q_mean_r": None,
                "spin_q_coherence": None,
                "n_dropped": pr.n_dropped,
                "reason": pr.reason or (part.reason if part is not None else None),
            }
        )
        if on_roi is not None:
            on_roi(column)
    for statistic in ("pearson", "spearman", "partial"):
        add_family_q(records, f"{statistic}_p", f"{statistic}_q")
    levels = sorted({level for record in records for level in record["within_category"]})
    for level in levels:
        add_family_q([r["within_category"][level] for r in records
                      if level in r["within_category"]], "p", "q",
                     rois=[r["roi"] for r in records if level in r["within_category"]])
    return records


def add_family_q(records: list[dict], p_key: str, q_key: str, *,
                 rois: Sequence[str] | None = None) -> None:
    """Set ``record[q_key]`` to the BH q-value of ``record[p_key]`` within the record's
    hemisphere family (:func:`~neuromem.analysis.correlation.hemisphere_family`; bilateral,
    lh and rh ROIs are separate families because they overlap). ``rois`` gives the ROI names
    when the records have no ``roi`` key."""
    names = [r["roi"] for r in records] if rois is None else list(rois)
    p = [np.nan if r.get(p_key) is None else r[p_key] for r in records]
    q = bh_fdr_by_family(p, [hemisphere_family(name) for name in names])
    for record, q_value in zip(records, q, strict=True):
        record[q_key] = _json_float(q_value)
