"""What layers are compared with (neuromem.representations.targets), read from real Parquet
tables through local paths and file:// URIs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.cortex.rois import load_roi_set
from neuromem.data.lamem import list_lamem
from neuromem.data.schema import BASE_COLUMNS, rows_to_arrow
from neuromem.data.synthetic import write_lamem
from neuromem.errors import InputError, UnknownNameError
from neuromem.representations.targets import (
    read_brain_targets,
    read_image_rows,
    readout_splits,
    scan_targets,
)
from neuromem.scoring.table import vertices_to_arrow


def test_vertex_targets_average_repeats_and_stay_in_roi(tmp_path):
    rng = np.random.default_rng(0)
    responses_bv = rng.standard_normal((6, 20484)).astype(np.float16)
    ids = ["a", "b", "c", "a", "b", "c"]  # every image twice (two subjects)
    table = pa.table({"image_id": ids, "vertices": vertices_to_arrow(responses_bv)})
    pq.write_table(table, tmp_path / "brain.parquet")
    (tmp_path / "ceiling.json").write_text(json.dumps({"roi_LOC": 0.5, "FFA": 0.25}))
    targets = read_brain_targets(f"file://{tmp_path}/brain.parquet", rois=["LOC", "roi_FFA"],
                                 max_vertices=20, ceiling=f"file://{tmp_path}/ceiling.json")
    assert targets.image_ids == ["a", "b", "c"]
    assert targets.ceilings == {"LOC": 0.5, "FFA": 0.25}
    mean_3v = (responses_bv[:3].astype(np.float64) + responses_bv[3:]) / 2
    roi_set = load_roi_set("default")
    for roi in ("LOC", "FFA"):
        y_nt = targets.targets[roi]
        assert y_nt.shape == (3, min(20, roi_set.indices[roi].size))
        inside = mean_3v[:, roi_set.indices[roi]]
        matches = [np.flatnonzero(np.all(np.isclose(inside, column[:, None]), axis=0))
                   for column in y_nt.T]
        assert all(len(m) == 1 for m in matches)  # each target is one vertex of the ROI
        assert len({int(m[0]) for m in matches}) == y_nt.shape[1]  # all distinct


def test_roi_column_targets_and_unknown_rois(tmp_path):
    frame = pd.DataFrame({"image_id": ["a", "b", "a"], "roi_PPA": [1.0, 2.0, 3.0],
                          "roi_lh_PPA": [0.0, 0.0, 0.0], "roi_V1": [5.0, 6.0, 7.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    targets = read_brain_targets(str(tmp_path / "t.parquet"), kind="auto")
    assert sorted(targets.targets) == ["PPA", "V1"]  # bilateral ROIs only by default
    np.testing.assert_allclose(targets.targets["PPA"][:, 0], [2.0, 2.0])
    with pytest.raises(UnknownNameError, match="no ROI column"):
        read_brain_targets(str(tmp_path / "t.parquet"), rois=["FFA"])
    with pytest.raises(InputError, match="no 'vertices' column"):
        read_brain_targets(str(tmp_path / "t.parquet"), kind="vertices")


def test_image_rows_from_a_uri_with_lamem_splits(tmp_path):
    truth = write_lamem(tmp_path / "lamem", n_images=20, image_size=16)
    rows = list_lamem(tmp_path / "lamem")
    bare = pa.table({"image_id": rows["image_id"], "source": rows["source"]})
    pq.write_table(bare, tmp_path / "bare.parquet")
    got = read_image_rows(f"file://{tmp_path}/bare.parquet", lamem_root=str(tmp_path / "lamem"),
                          limit=12)
    assert list(got.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS) and len(got) == 12
    assert rows_to_arrow(got).num_rows == 12  # the engine's input schema
    assert got["splits"].tolist() == rows["splits"].tolist()[:12]
    assert got["memorability"].isna().all() and (got["dataset"] == "table").all()
    with pytest.raises(InputError, match="expected columns image_id and source"):
        pq.write_table(pa.table({"image_id": ["a"]}), tmp_path / "no_source.parquet")
        read_image_rows(str(tmp_path / "no_source.parquet"))
    assert len(truth) == 20


def test_random_readout_splits_are_stratified_by_category():
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"image_id": [str(i) for i in range(100)],
                         "memorability": rng.uniform(size=100),
                         "category": ["scene"] * 30 + ["object"] * 70})
    splits = readout_splits(rows, seed=3)
    assert list(splits) == [f"random_{k}" for k in range(1, 6)]
    for train, test in splits.values():
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
        assert (rows["category"].iloc[test] == "scene").sum() == 6  # 20 % of each category
        assert (rows["category"].iloc[test] == "object").sum() == 14


def test_scan_targets_attach_categories_to_brain_images(tmp_path):
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(12)],
                          "roi_LOC": np.arange(12.0)})
    frame.to_parquet(tmp_path / "t.parquet")
    brain = read_brain_targets(str(tmp_path / "t.parquet"))
    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(11, -1, -1)],
                         "memorability": np.linspace(0, 1, 12),
                         "category": ["a", "b"] * 6})
    targets = scan_targets(rows, brain, seed=0)
    assert targets.memorability_ids == rows["image_id"].tolist()
    by_id = dict(zip(rows["image_id"], rows["category"], strict=True))
    assert targets.brain.categories.tolist() == [by_id[i] for i in targets.brain.image_ids]
