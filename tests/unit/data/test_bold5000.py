"""BOLD5000 measured ROI table from real .mat files (v5 and v7.3) and the stimulus listing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import loadmat
from scipy.io.matlab import matfile_version

from neuromem.data import bold5000, list_rows, synthetic
from neuromem.errors import InputError

ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")


@pytest.fixture(scope="module")
def bold_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bold5000")
    truth = synthetic.write_bold5000(root, n_stimuli=9, seed=8, subjects=(1, 3), n_repeats=2)
    return root, truth


def test_measured_table_averages_repeats(bold_root):
    root, truth = bold_root
    table = bold5000.measured_table(root, subjects=(1, 3))
    assert len(table) == 2 * 9
    assert not table.duplicated(["subject", "image_id"]).any()
    assert (table["encoder"] == "measured:BOLD5000-TR34").all()
    assert table["memorability"].isna().all()
    for column in [f"roi_{r}" for r in ROIS] + [f"roi_{h}_{r}" for h in ("lh", "rh") for r in ROIS]:
        assert table[column].dtype == np.float32
    expected = truth.groupby(["subject", "stimulus"]).agg(
        n=("presentation", "size"),
        category_truth=("category", "first"),
        **{f"{h}_{r}": (f"{h}_{r}", "mean") for h in ("lh", "rh") for r in ROIS},
    )
    merged = table.join(expected, on=["subject", "image_id"], how="inner")
    assert len(merged) == len(table)
    assert (merged["n_presentations"] == merged["n"]).all()
    assert sorted(merged["n_presentations"].unique()) == [1, 2]  # repeats listed as rep_<name>
    assert (merged["category"] == merged["category_truth"]).all()
    for roi in ROIS:
        np.testing.assert_allclose(merged[f"roi_lh_{roi}"], merged[f"lh_{roi}"], rtol=1e-6)
        np.testing.assert_allclose(merged[f"roi_rh_{roi}"], merged[f"rh_{roi}"], rtol=1e-6)
        bilateral = (merged[f"lh_{roi}"] + merged[f"rh_{roi}"]) / 2
        np.testing.assert_allclose(merged[f"roi_{roi}"], bilateral, rtol=1e-5, atol=1e-7)
    assert all(
        s.endswith(f"/{src}/{i}")
        for s, src, i in zip(table["source"], table["image_source"], table["image_id"], strict=True)
    )


def test_matlab_v73_files_match_v5(bold_root, tmp_path):
    root, _ = bold_root
    synthetic.write_bold5000(tmp_path, n_stimuli=9, seed=8, subjects=(1, 3), n_repeats=2, v73=True)
    mat = tmp_path / "ROIs" / "CSI1" / "mat" / "CSI1_ROIs_TR34.mat"
    assert matfile_version(mat) == (2, 0)  # scipy sees a v7.3 file and cannot read it
    with pytest.raises(NotImplementedError):
        loadmat(mat)
    v5 = bold5000.measured_table(root, subjects=(1, 3), tr="2")
    v73 = bold5000.measured_table(tmp_path, subjects=(1, 3), tr="2")
    roi_columns = [c for c in v5.columns if c.startswith("roi_")]
    np.testing.assert_array_equal(v5[roi_columns].to_numpy(), v73[roi_columns].to_numpy())


def test_measured_table_errors(bold_root, tmp_path):
    root, _ = bold_root
    with pytest.raises(InputError, match="TR"):
        bold5000.measured_table(root, tr="7")
    synthetic.write_bold5000(tmp_path, n_stimuli=6, seed=1, subjects=(2,))
    stim_list = tmp_path / "ROIs" / "stim_lists" / "CSI02_stim_lists.txt"
    stim_list.write_text("\n".join(stim_list.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(InputError, match="presentations"):
        bold5000.measured_table(tmp_path, subjects=(2,))


def test_bold5000_stimulus_listing(bold_root):
    root, _ = bold_root
    rows = list_rows("bold5000", root)
    written = synthetic.bold5000_stimuli(9)
    assert sorted(rows["image_id"]) == sorted(name for name, _ in written)
    by_id = rows.set_index("image_id")
    for name, source in written:
        assert by_id.loc[name, "image_source"] == source
        assert by_id.loc[name, "category"] == ("scene" if source == "Scene" else "object")
    assert len(list_rows("bold5000", root, split="Scene")) == 3
