"""Human memorability exported as a table and used by ``neuromem decompose`` as its memorability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.cli import main
from neuromem.errors import InputError
from neuromem.game.export import annotate_scores, export_human, read_scores, write_scores
from neuromem.game.scoring import image_scores, split_half
from tests.unit.game.records import simulate_records


def test_export_leaves_flagged_participants_out_and_records_the_consistency(tmp_path):
    truth = np.random.default_rng(2).uniform(0.3, 0.9, 40)
    good = simulate_records(truth, 30, seed=3)
    sleepy = simulate_records(truth, 3, seed=4, vigilance_hit=0.0, participant_prefix="z")
    responses = pd.concat([good, sleepy], ignore_index=True)
    out = tmp_path / "human.parquet"
    record = export_human(responses, str(out), study="s", reference_lag=100, n_splits=5)
    scores, stored = read_scores(str(out))
    assert stored == json.loads(json.dumps(record))
    assert record["flagged"] == ["z000", "z001", "z002"] and record["n_participants"] == 30
    expected = image_scores(good, 100).reset_index(drop=True)
    pd.testing.assert_frame_equal(scores, expected, check_like=True)
    assert record["split_half"]["rho"] == pytest.approx(
        split_half(good, n_splits=5, seed=0, reference_lag=100).rho)
    with pytest.raises(InputError, match="every participant"):
        export_human(sleepy, str(out), study="s")
    # a study's own thresholds are used and recorded
    lenient = export_human(responses, str(out), study="s", n_splits=5,
                           flag_thresholds={"max_vigilance_miss": 1.0})
    assert lenient["flagged"] == [] and lenient["flag_thresholds"] == {
        "max_vigilance_miss": 1.0, "max_false_alarm": 0.3, "min_median_rt_ms": 200.0}


def test_exported_human_memorability_feeds_decompose(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.3, 0.9, 60)
    responses = simulate_records(truth, 40, seed=1)
    scores = image_scores(responses)
    consistency = split_half(responses, n_splits=10, seed=0)
    human = tmp_path / "human.parquet"
    write_scores(scores, str(human), {"study": "demo", "alpha": scores.attrs["alpha"],
                                      "split_half": consistency.rho_corrected})
    back, record = read_scores(str(human))
    pd.testing.assert_frame_equal(back, scores.reset_index(drop=True), check_like=True)
    assert record["study"] == "demo"

    # a score table: roi_FFA follows the true memorability, roi_V1 is noise; 5 images unscored
    table = tmp_path / "scores"
    table.mkdir()
    ids = [f"img{i:04d}" for i in range(60)] + [f"new{i}" for i in range(5)]
    signal = np.concatenate([truth, rng.uniform(0.3, 0.9, 5)])
    pq.write_table(pa.table({"image_id": ids,
                             "roi_FFA": pa.array(signal + rng.normal(0, 0.05, 65), pa.float32()),
                             "roi_V1": pa.array(rng.normal(size=65), pa.float32())}),
                   table / "part-0.parquet")
    joined = tmp_path / "joined"
    counts = annotate_scores(str(table), str(human), str(joined))
    assert counts["rows"] == 65 and counts["rows_without_value"] == 5
    columns = pq.read_table(joined).column_names
    assert {"memorability_human", "human_hit_rate", "human_n_participants"} <= set(columns)

    out = tmp_path / "decomposed"
    assert main(["decompose", str(joined), "--out", str(out), "--memorability",
                 "memorability_human", "--bootstrap", "0", "--spins", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    by_roi = {r["roi"]: r for r in results["rois"]}
    assert results["n_images"] == 60 and by_roi["FFA"]["n"] == 60  # rows with a human score
    assert by_roi["FFA"]["spearman_r"] > 0.7 and abs(by_roi["V1"]["spearman_r"]) < 0.4


def test_export_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="memorability_human"):
        write_scores(pd.DataFrame({"image_id": ["a"]}), str(tmp_path / "x.parquet"), {})
    human = tmp_path / "human.parquet"
    write_scores(pd.DataFrame({"image_id": ["a"], "memorability_human": [0.5],
                               "hit_rate": [0.5], "false_alarm_rate": [0.1],
                               "n_participants": [3]}), str(human), {})
    table = tmp_path / "scores"
    table.mkdir()
    pq.write_table(pa.table({"image_id": ["b"], "roi_V1": [0.1]}), table / "part-0.parquet")
    with pytest.raises(InputError, match="no image of"):
        annotate_scores(str(table), str(human), str(tmp_path / "out"))
