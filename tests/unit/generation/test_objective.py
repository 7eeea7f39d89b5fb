"""Target specs and the weighted ROI objective."""

from __future__ import annotations

import pytest
import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.errors import InputError, UnknownNameError
from neuromem.generation.objective import RoiObjective, format_target, parse_target


def test_parse_target_weights_and_round_trip():
    weights = parse_target(" roi_PPA:+1, roi_RSC:-1,roi_FFA:0.5 ,roi_V1")
    assert weights == {"roi_PPA": 1.0, "roi_RSC": -1.0, "roi_FFA": 0.5, "roi_V1": 1.0}
    assert parse_target(format_target(weights)) == weights


def test_roi_names_with_or_without_prefix_are_the_same_target():
    assert parse_target("PPA:+1, RSC:-1") == parse_target("roi_PPA:+1,roi_RSC:-1")
    assert parse_target("lh_FFA") == {"roi_lh_FFA": 1.0}
    with pytest.raises(InputError, match="twice"):
        parse_target("PPA:1,roi_PPA:2")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty target"),
        (":+1", "empty ROI name"),
        ("roi_PPA:abc", "not a number"),
        ("roi_PPA:inf", "finite"),
        ("roi_PPA:1,roi_PPA:2", "twice"),
    ],
)
def test_parse_target_rejects_bad_specs(spec, message):
    with pytest.raises(InputError, match=message):
        parse_target(spec)


def test_objective_is_the_weighted_sum_of_roi_means():
    roi_set = load_roi_set("default")
    objective = RoiObjective(RoiReducer(roi_set), {"roi_PPA": 2.0, "roi_RSC": -1.0})
    responses_bv = torch.randn(3, 20484, generator=torch.Generator().manual_seed(0))
    ppa_b = responses_bv[:, roi_set.indices["PPA"]].mean(dim=1)
    rsc_b = responses_bv[:, roi_set.indices["RSC"]].mean(dim=1)
    torch.testing.assert_close(objective(responses_bv), 2 * ppa_b - rsc_b)


def test_objective_rejects_unknown_roi():
    with pytest.raises(UnknownNameError, match="roi_XYZ"):
        RoiObjective(RoiReducer(load_roi_set("default")), {"roi_XYZ": 1.0})
