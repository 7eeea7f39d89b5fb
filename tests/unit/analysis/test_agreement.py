"""Agreement of ROI correlations between predictors: judged only where the intervals exclude 0."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.analysis import agreement_records, agreement_summary, roi_agreement
from neuromem.errors import InputError


def _rec(roi, r, ci):
    return {"roi": roi, "pearson_r": r, "pearson_ci": ci}


def test_roi_agreement_judges_only_conclusive_intervals():
    tribe = [
        _rec("FFA", 0.23, [0.1, 0.3]),
        _rec("RSC", -0.49, [-0.6, -0.4]),
        _rec("V1", 0.06, [0.01, 0.1]),
        _rec("PPA", None, [None, None]),
        _rec("LOC", 0.02, [-0.05, 0.09]),   # spans 0
        _rec("STS", 0.01, [-0.05, 0.07]),   # spans 0
    ]
    bold = [
        _rec("FFA", 0.10, [0.02, 0.2]),
        _rec("RSC", -0.20, [-0.3, -0.1]),
        _rec("V1", -0.05, [-0.1, -0.01]),
        _rec("PPA", -0.3, [-0.4, -0.2]),
        _rec("LOC", 0.30, [0.2, 0.4]),
        _rec("STS", -0.01, [-0.08, 0.06]),  # spans 0: two near-zero rs do not "agree"
    ]
    table = roi_agreement({"tribev2": tribe, "bold5000": bold})
    assert list(table["roi"]) == ["FFA", "RSC", "V1", "PPA", "LOC", "STS"]
    assert table["tribev2"].iloc[1] == -0.49 and np.isnan(table["tribev2"].iloc[3])
    assert table["status"].tolist() == ["agree", "agree", "disagree", "too few", "inconclusive",
                                        "all inconclusive"]
    assert table["signs_agree"].tolist()[:3] == [True, True, False]
    assert table["signs_agree"].isna().tolist() == [False, False, False, True, True, True]
    assert agreement_summary(table) == {"agree": 2, "disagree": 1, "inconclusive": 1,
                                        "all inconclusive": 1, "too few": 1}
    records = agreement_records(table)
    assert records[0] == {"roi": "FFA", "r": {"tribev2": 0.23, "bold5000": 0.10},
                          "n_predictors": 2, "n_conclusive": 2, "signs_agree": True,
                          "status": "agree"}
    assert records[3]["signs_agree"] is None and records[3]["r"]["tribev2"] is None
    assert records[5]["signs_agree"] is None and records[5]["n_conclusive"] == 0
    with pytest.raises(InputError, match="'roi'"):
        roi_agreement({"a": [{"r": 1.0}]})
