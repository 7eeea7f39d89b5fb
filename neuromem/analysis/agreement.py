"""Agreement between predictors: each ROI's correlation per predictor and whether the signs agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from neuromem.errors import InputError


def roi_agreement(
    results: Mapping[str, Sequence[Mapping]], *, key: str = "pearson_r", ci_key: str = "pearson_ci"
) -> pd.DataFrame:
    """Each ROI's coefficient per predictor, side by side, and whether the predictors agree.

    Two coefficients near zero whose intervals span 0 do not agree or disagree: they say
    nothing. So agreement is judged only where every predictor's interval excludes 0.

    Parameters
    ----------
    results : mapping of str to sequence of mapping
        Predictor name (e.g. ``"tribev2"``, ``"bold5000"``) → its per-ROI records, each with
        ``"roi"``, ``key`` and ``ci_key`` (the ``rois`` list of a ``results.json``).
    key, ci_key : str
        Which coefficient and which of its intervals (``[low, high]``) to compare.

    Returns
    -------
    pandas.DataFrame
        One row per ROI (in order of first appearance), one column per predictor (NaN where a
        predictor lacks the ROI or its coefficient is undefined), ``n_predictors`` (finite
        coefficients), ``n_conclusive`` (intervals that exclude 0) and ``signs_agree``: True when
        at least two predictors have a coefficient, all of their intervals exclude 0 and the
        signs are equal; False when they are all conclusive and the signs differ; missing
        (``pd.NA``) otherwise. ``status`` names the case: ``agree``, ``disagree``,
        ``inconclusive`` (some interval spans 0; ``all inconclusive`` when every one does) or
        ``too few``.
    """
    if len(results) < 1:
        raise InputError("agreement needs the ROI results of at least one predictor")
    columns, conclusive = {}, {}
    order: list[str] = []
    for predictor, records in results.items():
        values, excludes = {}, {}
        for record in records:
            if "roi" not in record or key not in record:
                raise InputError(f"each ROI record needs 'roi' and {key!r}; got {sorted(record)}")
            value = record[key]
            values[record["roi"]] = np.nan if value is None else float(value)
            low, high = record.get(ci_key) or (None, None)
            excludes[record["roi"]] = (low is not None and high is not None
                                       and (low > 0 or high < 0))
            if record["roi"] not in order:
                order.append(record["roi"])
        columns[predictor], conclusive[predictor] = values, excludes
    table = pd.DataFrame({p: [columns[p].get(roi, np.nan) for roi in order] for p in results})
    table.insert(0, "roi", order)
    r_rp = table[list(results)].to_numpy(dtype=np.float64)
    finite = np.isfinite(r_rp)
    sure_rp = np.array([[conclusive[p].get(roi, False) for p in results] for roi in order],
                       dtype=bool).reshape(len(order), len(results)) & finite
    n_pred, n_sure = finite.sum(1), sure_rp.sum(1)
    signs = np.sign(np.where(finite, r_rp, 0.0))
    same_sign = ((signs > 0) | ~finite).all(1) | ((signs < 0) | ~finite).all(1)
    judged = (n_pred >= 2) & (n_sure == n_pred)
    agree = pd.array(same_sign, dtype="boolean")
    agree[~judged] = pd.NA
    status = np.where(n_pred < 2, "too few",
                      np.where(judged, np.where(same_sign, "agree", "disagree"),
                               np.where(n_sure == 0, "all inconclusive", "inconclusive")))
    table["n_predictors"] = n_pred
    table["n_conclusive"] = n_sure
    table["signs_agree"] = agree
    table["status"] = status
    return table


def agreement_summary(table: pd.DataFrame) -> dict[str, int]:
    """Counts of ROIs per :func:`roi_agreement` ``status``."""
    counts = table["status"].value_counts()
    return {name: int(counts.get(name, 0))
            for name in ("agree", "disagree", "inconclusive", "all inconclusive", "too few")}


def agreement_records(table: pd.DataFrame) -> list[dict]:
    """JSON-able rows of :func:`roi_agreement`: ``{"roi", "r": {predictor: r|None},
    "n_predictors", "n_conclusive", "signs_agree", "status"}``."""
    extra = ("roi", "n_predictors", "n_conclusive", "signs_agree", "status")
    predictors = [c for c in table.columns if c not in extra]
    out = []
    for row in table.to_dict("records"):
        agree = row["signs_agree"]
        out.append(
            {
                "roi": row["roi"],
                "r": {p: (float(row[p]) if np.isfinite(row[p]) else None) for p in predictors},
                "n_predictors": int(row["n_predictors"]),
                "n_conclusive": int(row["n_conclusive"]),
                "signs_agree": None if pd.isna(agree) else bool(agree),
                "status": row["status"],
            }
        )
    return out
