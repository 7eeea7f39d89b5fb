"""Base vs engineered comparison: permutation test against scipy, effects on simulated studies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import special, stats

from neuromem.errors import InputError
from neuromem.game.compare import (
    compare_conditions,
    hit_trials,
    pair_differences,
    paired_permutation_test,
    simulated_power,
    write_comparison_report,
)
from tests.unit.game.records import simulate_paired_records


def _scipy_paired(d, n_resamples, rng=None):
    return stats.permutation_test((d,), np.mean, permutation_type="samples",
                                  n_resamples=n_resamples, alternative="two-sided",
                                  random_state=rng).pvalue


def test_exact_permutation_p_equals_scipy():
    d = np.array([0.12, -0.03, 0.08, 0.2, 0.05, -0.1, 0.15, 0.07])
    result = paired_permutation_test(d, n_permutations=10_000)
    assert result.exact and result.n_permutations == 256
    assert result.p_value == pytest.approx(_scipy_paired(d, np.inf))
    assert result.mean_difference == pytest.approx(d.mean())


def test_random_sign_flips_agree_with_scipy_within_monte_carlo_error():
    d = np.random.default_rng(0).normal(0.04, 0.1, 25)
    ours = paired_permutation_test(d, n_permutations=20_000, seed=3)
    theirs = _scipy_paired(d, 20_000, np.random.default_rng(4))
    assert not ours.exact and ours.p_value == pytest.approx(theirs, abs=0.01)
    assert paired_permutation_test(d, n_permutations=20_000, seed=3).p_value == ours.p_value
    assert paired_permutation_test(np.full(30, 0.5), n_permutations=999).p_value == 1 / 1000


def test_pair_differences_of_a_small_record():
    rows = [("a", "b1", "target", True, 100.0, True, "base", "k1"),
            ("b", "b1", "target", True, 100.0, False, "base", "k1"),
            ("a", "l1", "target", True, 100.0, True, "lora", "k1"),
            ("a", "b2", "target", True, 100.0, False, "base", "k2"),
            ("b", "l2", "target", True, 100.0, True, "lora", "k2"),
            ("b", "l3", "target", True, 100.0, True, "lora", "k3"),  # no base twin
            ("b", "l3", "target", False, np.nan, False, "lora", "k3")]
    record = pd.DataFrame(rows, columns=["participant", "image_id", "kind", "repeat", "lag",
                                         "response", "condition", "pair"])
    pairs = pair_differences(hit_trials(record), "base", "lora")
    assert list(pairs["pair"]) == ["k1", "k2"]
    np.testing.assert_allclose(pairs["hit_rate_base"], [0.5, 0.0])
    np.testing.assert_allclose(pairs["difference"], [0.5, 1.0])
    assert list(pairs["n_base"]) == [2, 1]
    # an image table overrides the record's labels
    images = pd.DataFrame({"image_id": ["b1", "l1", "b2", "l2", "l3"],
                           "condition": ["lora", "base", "base", "lora", "lora"],
                           "pair": ["k1", "k1", "k2", "k2", "k3"]})
    swapped = pair_differences(hit_trials(record.drop(columns=["condition", "pair"]), images),
                               "base", "lora")
    assert swapped.loc[0, "difference"] == pytest.approx(-0.5)


def test_a_real_effect_is_found_by_all_three_estimates(tmp_path):
    record = simulate_paired_records(60, 40, log_odds=0.8, seed=1)
    result = compare_conditions(hit_trials(record), n_permutations=5000, seed=0)
    assert result.engineered == "lora" and result.n_pairs == 40 and result.n_participants == 60
    assert result.permutation.p_value < 0.01
    assert 0 < result.ci_low < result.mean_difference < result.ci_high
    pairs = result.pairs
    assert result.cohens_dz == pytest.approx(pairs["difference"].mean()
                                             / pairs["difference"].std(ddof=1))
    mixed = result.mixed
    assert mixed.ci_low < 0.8 < mixed.ci_high and mixed.ci_low > 0
    assert mixed.odds_ratio == pytest.approx(np.exp(mixed.log_odds))
    assert set(mixed.random_sd) == {"participant", "image", "pair"}

    sources = {}
    for image_id in pairs["image_base"].tolist() + pairs["image_engineered"].tolist()[:-1]:
        path = tmp_path / f"{image_id}.png"
        Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
        sources[image_id] = str(path)
    out = tmp_path / "report"
    write_comparison_report(result, str(out), sources=sources)
    report = (out / "report.md").read_text()
    assert "permutation test: p = " in report and "(pairs.png)" in report
    assert (out / "pairs.png").stat().st_size > 5000
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["permutation"]["p_value"] == result.permutation.p_value
    assert pd.read_parquet(out / "pairs.parquet").shape[0] == 40


def test_no_effect_is_not_significant():
    record = simulate_paired_records(40, 30, log_odds=0.0, seed=2)
    result = compare_conditions(hit_trials(record), n_permutations=2000, seed=0, mixed=False)
    assert result.permutation.p_value > 0.05 and result.ci_low < 0 < result.ci_high
    assert result.mixed is None


def test_simulated_power_holds_its_level_and_grows_with_the_effect_and_participants():
    null = simulated_power(0.0, 30, 30, n_simulations=200, n_permutations=300, seed=0)
    assert null.power < 0.1 and null.ci_low <= 0.05 <= null.ci_high + 0.02
    small = simulated_power(0.1, 20, 30, n_simulations=60, n_permutations=300, seed=1)
    large = simulated_power(0.1, 80, 30, n_simulations=60, n_permutations=300, seed=1)
    assert small.power < large.power and large.power > 0.9
    assert small.log_odds == pytest.approx(special.logit(0.7) - special.logit(0.6))


def test_bad_comparisons_fail_with_one_clear_message():
    record = simulate_paired_records(4, 3, log_odds=0.0)
    trials = hit_trials(record)
    with pytest.raises(InputError, match="base condition 'control'"):
        compare_conditions(trials, base="control")
    with pytest.raises(InputError, match="condition 'guided'"):
        compare_conditions(trials, engineered="guided")
    with pytest.raises(InputError, match="needs the columns"):
        hit_trials(record.drop(columns=["pair"]))
    with pytest.raises(InputError, match="keep hit rates"):
        simulated_power(0.5, 10, 10, base_rate=0.6)
