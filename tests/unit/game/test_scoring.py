"""Scores of human responses: checked against statsmodels/scipy and simulated participants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from neuromem.errors import InputError
from neuromem.game.scoring import (
    MEMORABILITY_HUMAN,
    drop_flagged,
    expected_split_half,
    fit_lag_decay,
    image_scores,
    participant_flags,
    spearman_brown,
    split_half,
)
from tests.unit.game.records import simulate_records


def _decay_data(seed: int = 1):
    rng = np.random.default_rng(seed)
    n_images = 30
    counts = rng.integers(5, 15, n_images)
    image = np.repeat(np.arange(n_images), counts)
    lags = rng.integers(40, 400, image.size).astype(float)
    truth = rng.uniform(0.4, 0.9, n_images)
    hits = (rng.random(image.size) < np.clip(truth[image] - 0.1 * np.log(lags / 100), 0, 1))
    return image, hits.astype(float), lags


def test_lag_decay_is_the_weighted_least_squares_of_khosla_2015():
    image, hits, lags = _decay_data()
    fit = fit_lag_decay(image, hits, lags, reference_lag=100.0)
    # the objective sum_i 1/n_i sum_j (x_ij - m_i - alpha log(t_ij/T))^2 as a statsmodels WLS
    dummies = pd.get_dummies(image).to_numpy(dtype=float)
    design = np.column_stack([dummies, np.log(lags / 100.0)])
    weights = 1.0 / np.bincount(image)[image]
    wls = sm.WLS(hits, design, weights=weights).fit()
    assert fit.alpha == pytest.approx(wls.params[-1], abs=1e-10)
    np.testing.assert_allclose(fit.memorability.to_numpy(), wls.params[:-1], atol=1e-10)


def test_lag_decay_is_the_fixed_point_of_the_papers_alternating_updates():
    image, hits, lags = _decay_data(seed=2)
    ell = np.log(lags / 120.0)
    n = np.bincount(image)[image]
    m = np.ones(image.max() + 1)
    for _ in range(500):
        alpha = np.sum(ell * (hits - m[image]) / n) / np.sum(ell ** 2 / n)
        m = np.bincount(image, hits - alpha * ell) / np.bincount(image)
    fit = fit_lag_decay(image, hits, lags, reference_lag=120.0)
    assert fit.alpha == pytest.approx(alpha, abs=1e-8)
    np.testing.assert_allclose(fit.memorability.to_numpy(), m, atol=1e-8)


def test_constant_lags_give_the_plain_hit_rate():
    fit = fit_lag_decay(np.array([0, 0, 1, 1]), np.array([1, 0, 1, 1]), np.full(4, 100.0), 100)
    assert fit.alpha == 0.0
    np.testing.assert_allclose(fit.memorability.to_numpy(), [0.5, 1.0])


def _record(rows):
    return pd.DataFrame(rows, columns=["participant", "image_id", "kind", "repeat", "lag",
                                       "response"])


def test_image_scores_count_hits_false_alarms_and_participants():
    nan = np.nan
    responses = _record([
        ("a", "x", "target", False, nan, True), ("a", "x", "target", True, 100.0, True),
        ("a", "y", "target", False, nan, False), ("a", "y", "target", True, 100.0, False),
        ("b", "x", "target", False, nan, False), ("b", "x", "target", True, 100.0, True),
        ("b", "y", "filler", False, nan, True),
        ("c", "x", "target", False, nan, False), ("c", "x", "target", True, 100.0, False),
        ("c", "v", "vigilance", False, nan, False), ("c", "v", "vigilance", True, 3.0, True),
    ])
    table = image_scores(responses).set_index("image_id")
    assert list(table.index) == ["x", "y"]  # vigilance images are not scored
    assert table.loc["x", "hit_rate"] == pytest.approx(2 / 3)
    assert table.loc["x", "false_alarm_rate"] == pytest.approx(1 / 3)
    assert table.loc["y", "false_alarm_rate"] == pytest.approx(1 / 2)  # as target and as filler
    assert table.loc["x", "n_participants"] == 3 and table.loc["y", "n_participants"] == 1
    assert table.loc["x", MEMORABILITY_HUMAN] == pytest.approx(2 / 3)  # one lag: plain rate


def test_simulated_memorability_and_decay_are_recovered():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.35, 0.9, 120)
    responses = simulate_records(truth, 80, seed=4, lags=(40, 400), alpha=-0.08,
                                 reference_lag=100.0, target_fraction=0.6)
    table = image_scores(responses, reference_lag=100.0)
    assert table.attrs["alpha"] == pytest.approx(-0.08, abs=0.02)
    order = np.array([int(s[3:]) for s in table["image_id"]])
    corrected = table[MEMORABILITY_HUMAN].to_numpy()
    assert np.mean(np.abs(corrected - truth[order])) < 0.06
    assert stats.spearmanr(corrected, truth[order]).statistic > 0.8


def test_split_half_matches_its_expected_value_from_the_simulated_reliability():
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.3, 0.9, 300)
    responses = simulate_records(truth, 60, seed=6, n_vigilance=0, n_fillers=0)
    result = split_half(responses, n_splits=40, seed=0)
    expected = expected_split_half(truth, n_per_half=30)
    assert result.rho == pytest.approx(expected, abs=0.03)
    assert result.rho_corrected == pytest.approx(2 * result.rho / (1 + result.rho))
    assert result.rhos.shape == (40,) and result.n_images == 300
    again = split_half(responses, n_splits=40, seed=0)
    np.testing.assert_array_equal(again.rhos, result.rhos)
    assert split_half(responses, n_splits=40, seed=1).rhos[0] != result.rhos[0]
    # pure noise (every image equally memorable) has no consistency
    noise = simulate_records(np.full(300, 0.6), 60, seed=7, n_vigilance=0, n_fillers=0)
    assert abs(split_half(noise, n_splits=20, seed=0).rho) < 0.06


def test_lag_corrected_split_half_runs_per_half():
    truth = np.random.default_rng(8).uniform(0.3, 0.9, 60)
    responses = simulate_records(truth, 30, seed=9, lags=(40, 300), alpha=-0.05)
    plain = split_half(responses, n_splits=5, seed=0)
    corrected = split_half(responses, n_splits=5, seed=0, lag_corrected=True)
    assert 0.2 < corrected.rho < 1 and not np.allclose(plain.rhos, corrected.rhos)


def test_spearman_brown_formula():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    np.testing.assert_allclose(spearman_brown(np.array([0.2, 0.6]), factor=3),
                               [0.6 / 1.4, 1.8 / 2.2])


def test_participants_who_miss_vigilance_or_false_alarm_are_flagged():
    truth = np.full(20, 0.7)
    good = simulate_records(truth, 5, seed=10, participant_prefix="good")
    sleepy = simulate_records(truth, 2, seed=11, vigilance_hit=0.1, participant_prefix="sleepy")
    clicky = simulate_records(truth, 2, seed=12, false_alarm=0.9, participant_prefix="clicky")
    responses = pd.concat([good, sleepy, clicky], ignore_index=True)
    flags = participant_flags(responses).set_index("participant")
    assert set(flags.index[flags["flagged"]]) == {"sleepy000", "sleepy001", "clicky000",
                                                  "clicky001"}
    assert "vigilance" in flags.loc["sleepy000", "reason"]
    assert "false alarms" in flags.loc["clicky000", "reason"]
    assert flags.loc["good000", "vigilance_repeats"] == 10
    kept = drop_flagged(responses, flags.reset_index())
    assert set(kept["participant"]) == {f"good{i:03d}" for i in range(5)}
    lenient = participant_flags(responses, max_vigilance_miss=1.0, max_false_alarm=1.0)
    assert not lenient["flagged"].any()


def test_participants_who_press_before_they_could_see_the_image_are_flagged():
    truth = np.full(20, 0.7)
    responses = simulate_records(truth, 4, seed=13)
    rng = np.random.default_rng(0)
    fast = responses["participant"].isin(["p000", "p001"])
    # p000 presses at 80-180 ms, p001 at 150-260 ms (median ~205: kept), the others at 400-900
    rt = np.where(responses["participant"] == "p000", rng.uniform(80, 180, len(responses)),
                  np.where(fast, rng.uniform(150, 260, len(responses)),
                           rng.uniform(400, 900, len(responses))))
    responses["rt_ms"] = np.where(responses["response"], rt, np.nan)
    flags = participant_flags(responses).set_index("participant")
    expected = {p: float(np.median(responses.loc[(responses["participant"] == p)
                                                 & responses["response"], "rt_ms"]))
                for p in flags.index}
    np.testing.assert_allclose(flags["median_rt_ms"], [expected[p] for p in flags.index])
    assert expected["p001"] > 200 > expected["p000"]
    assert set(flags.index[flags["flagged"]]) == {"p000"}
    assert flags.loc["p000", "reason"] == "median response time < 200 ms"
    assert not participant_flags(responses, min_median_rt_ms=50)["flagged"].any()
    # a record without times (older exports, other tools) flags on rates alone
    assert participant_flags(responses.drop(columns="rt_ms"))["median_rt_ms"].isna().all()


def test_bad_records_fail_with_one_clear_message():
    with pytest.raises(InputError, match="lacks the columns"):
        image_scores(pd.DataFrame({"participant": ["a"]}))
    bad = _record([("a", "x", "target", True, np.nan, True)])
    with pytest.raises(InputError, match="positive finite lag"):
        image_scores(bad)
    odd = _record([("a", "x", "decoy", False, np.nan, True)])
    with pytest.raises(InputError, match="unknown trial kinds"):
        image_scores(odd)
    with pytest.raises(InputError, match="at least 2 participants"):
        split_half(simulate_records(np.full(5, 0.5), 1), n_splits=3)
