"""Agreement between predictors: each ROI's correlation per predictor and whether the signs agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from neuromem.errors import InputError


def roi_agreement(
    results: Mapping[str, Sequence[Mapping]], *, key: str = "pearson_r"
) -> pd.DataFrame:
    """Each ROI's coefficient per predictor, side by side, with a sign-agreement flag.

    Parameters
    ----------
    results : mapping of str to sequence of mapping
        Predictor name (e.g. ``"tribev2"``, ``"bold5000"``) → its per-ROI records, each with
        ``"roi"`` and ``key`` (the ``rois`` list of a ``results.json``).
    key : str
        Which coefficient to compare.

    Returns
    -------
    pandas.DataFrame
        One row per ROI (in order of first appearance), one column per predictor (NaN where a
        predictor lacks the ROI or its coefficient is undefined), ``n_predictors`` (finite
        coefficients) and ``signs_agree``: True when at least two predictors have a finite
        coefficient and all of those are non-zero with the same sign; False when they differ;
        missing (``pd.NA``) when fewer than two can be compared.
    """
    if len(results) < 1:
        raise InputError("agreement needs the ROI results of at least one predictor")
    columns = {}
    order: list[str] = []
    for predictor, records in results.items():
        values = {}
        for record in records:
            if "roi" not in record or key not in record:
                raise InputError(f"each ROI record needs 'roi' and {key!r}; got {sorted(record)}")
            value = record[key]
            values[record["roi"]] = np.nan if value is None else float(value)
            if record["roi"] not in order:
                order.append(record["roi"])
        columns[predictor] = values
    table = pd.DataFrame({p: [columns[p].get(roi, np.nan) for roi in order] for p in results})
    table.insert(0, "roi", order)
    r_rp = table[list(results)].to_numpy(dtype=np.float64)
    finite = np.isfinite(r_rp)
    n_pred = finite.sum(1)
    signs = np.sign(np.where(finite, r_rp, 0.0))
    all_pos = ((signs > 0) | ~finite).all(1)
    all_neg = ((signs < 0) | ~finite).all(1)
    agree = pd.array(all_pos | all_neg, dtype="boolean")
    agree[n_pred < 2] = pd.NA
    table["n_predictors"] = n_pred
    table["signs_agree"] = agree
    return table


def agreement_records(table: pd.DataFrame) -> list[dict]:
    """JSON-able rows of :func:`roi_agreement`: ``{"roi", "r": {predictor: r|None}, "n_predictors", "signs_agree"}``."""
    predictors = [c for c in table.columns if c not in ("roi", "n_predictors", "signs_agree")]
    out = []
    for row in table.to_dict("records"):
        agree = row["signs_agree"]
        out.append(
            {
                "roi": row["roi"],
                "r": {p: (float(row[p]) if np.isfinite(row[p]) else None) for p in predictors},
                "n_predictors": int(row["n_predictors"]),
                "signs_agree": None if pd.isna(agree) else bool(agree),
            }
        )
    return out
