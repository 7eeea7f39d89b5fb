"""Agreement of ROI correlations between predictors."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.analysis import agreement_records, roi_agreement
from neuromem.errors import InputError


def test_roi_agreement_table_and_records():
    tribe = [
        {"roi": "FFA", "pearson_r": 0.23},
        {"roi": "RSC", "pearson_r": -0.49},
        {"roi": "V1", "pearson_r": 0.06},
        {"roi": "PPA", "pearson_r": None},
    ]
    bold = [
        {"roi": "FFA", "pearson_r": 0.10},
        {"roi": "RSC", "pearson_r": -0.20},
        {"roi": "V1", "pearson_r": -0.02},
        {"roi": "PPA", "pearson_r": -0.3},
    ]
    table = roi_agreement({"tribev2": tribe, "bold5000": bold})
    assert list(table["roi"]) == ["FFA", "RSC", "V1", "PPA"]
    assert table["tribev2"].iloc[1] == -0.49 and np.isnan(table["tribev2"].iloc[3])
    assert table["signs_agree"].tolist()[:3] == [True, True, False]
    assert table["signs_agree"].isna().tolist() == [False, False, False, True]
    records = agreement_records(table)
    assert records[0] == {
        "roi": "FFA",
        "r": {"tribev2": 0.23, "bold5000": 0.10},
        "n_predictors": 2,
        "signs_agree": True,
    }
    assert records[3]["signs_agree"] is None and records[3]["r"]["tribev2"] is None
    with pytest.raises(InputError, match="'roi'"):
        roi_agreement({"a": [{"r": 1.0}]})
