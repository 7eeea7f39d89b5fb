"""Atlases: HCP-MMP1 from neuropythy's files, and user files in FreeSurfer and GIfTI formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuromem.cortex import atlas as atlas_mod
from neuromem.cortex.atlas import load_atlas, load_glasser
from neuromem.cortex.surface import mesh_coords
from neuromem.errors import InputError, UnknownNameError, VertexCountError

GLASSER_DIR = (
    Path(importlib.util.find_spec("neuropythy").submodule_search_locations[0])
    / "lib/data/fsaverage/surf"
)


def test_glasser_labels_equal_nibabel_reading_of_neuropythy_files():
    glasser = load_glasser()
    assert glasser.name == "glasser" and glasser.labels_v.dtype == np.int32
    for hemi, half in (("lh", slice(0, 10242)), ("rh", slice(10242, 20484))):
        raw = np.asarray(nib.load(GLASSER_DIR / f"{hemi}.glasser16_atlas.v1_0.mgz").dataobj).ravel()
        expected = np.nan_to_num(raw[:10242], nan=0).astype(np.int32)
        np.testing.assert_array_equal(glasser.labels_v[half], expected)
        # every one of the 180 areas survives the cut to fsaverage5, in both hemispheres
        assert set(np.unique(glasser.labels_v[half])) == set(range(181))


def test_glasser_name_table_spot_checks():
    names = load_glasser().names
    assert len(names) == 180 and len(set(names.values())) == 180
    # standard HCP-MMP1 order (domain.md section 2)
    expected = {1: "V1", 2: "MST", 3: "V6", 4: "V2", 5: "V3", 6: "V4", 7: "V8", 14: "RSC"}
    expected |= {15: "POS2", 16: "V7", 17: "IPS1", 18: "FFC", 19: "V3B", 20: "LO1", 21: "LO2"}
    expected |= {22: "PIT", 23: "MT", 126: "PHA1", 129: "STSdp", 131: "TGd", 180: "p24"}
    for label, area in expected.items():
        assert names[label] == area


def test_glasser_counts_and_centroids_match_domain_measurements():
    glasser = load_glasser()
    pial_v3 = mesh_coords("pial")
    assert glasser.vertices(["V1"], "left").size == 285
    # left-hemisphere centroids (mm) measured independently, domain.md section 2
    measured = {
        "V1": (-11.7, -82.8, 0.9),
        "RSC": (-4.0, -34.5, 21.1),
        "FFC": (-42.1, -56.5, -21.4),
        "LO1": (-38.7, -84.1, 4.8),
        "PHA1": (-22.2, -36.7, -18.5),
        "STSdp": (-52.8, -33.7, -2.7),
        "TGd": (-36.6, 10.5, -33.7),
    }
    for area, centroid in measured.items():
        got = pial_v3[glasser.vertices([area], "left")].mean(0)
        np.testing.assert_allclose(got, centroid, atol=0.06, err_msg=area)


def test_unknown_area_lists_close_matches():
    with pytest.raises(UnknownNameError, match="FFC") as info:
        load_glasser().label("FFc")
    assert "close matches" in str(info.value)


def _labels_hemi(seed: int, n: int = 10242) -> np.ndarray:
    """Labels 0..2 in blocks, with some vertices unlabelled (-1)."""
    labels = np.repeat([0, 1, 2], n // 3 + 1)[:n]
    labels[np.random.default_rng(seed).choice(n, 50, replace=False)] = -1
    return labels


def _write_annot(path: Path, labels: np.ndarray, names: list[str]) -> None:
    ctab = np.array([[25, 5, 25, 0], [220, 20, 10, 0], [20, 220, 60, 0]], dtype=np.int32)
    nib.freesurfer.write_annot(str(path), labels, ctab, names, fill_ctab=True)


def test_annot_round_trip_with_hcp_style_names(tmp_path):
    lh_labels, rh_labels = _labels_hemi(0), _labels_hemi(1)
    _write_annot(tmp_path / "lh.toy.annot", lh_labels, ["???", "L_A_ROI", "L_B_ROI"])
    _write_annot(tmp_path / "rh.toy.annot", rh_labels, ["???", "R_A_ROI", "R_B_ROI"])
    toy = load_atlas(tmp_path / "lh.toy.annot", tmp_path / "rh.toy.annot")
    assert toy.name == "toy" and toy.areas == ["A", "B"]
    np.testing.assert_array_equal(
        toy.vertices(["A"]), np.flatnonzero(np.concatenate([lh_labels, rh_labels]) == 1)
    )
    np.testing.assert_array_equal(
        toy.vertices(["B"], "right"), 10242 + np.flatnonzero(rh_labels == 2)
    )
    assert np.all(toy.labels_v[np.concatenate([lh_labels, rh_labels]) <= 0] == 0)


def test_fsaverage_sized_annot_is_cut_to_fsaverage5(tmp_path):
    big = np.repeat([1, 2], 163842 // 2 + 1)[:163842]
    big[:10242] = np.arange(10242) % 2 + 1
    _write_annot(tmp_path / "lh.big.annot", big, ["unknown", "A", "B"])
    _write_annot(tmp_path / "rh.big.annot", big, ["unknown", "A", "B"])
    toy = load_atlas(tmp_path / "lh.big.annot", tmp_path / "rh.big.annot")
    np.testing.assert_array_equal(toy.labels_v[:10242], big[:10242])


def _write_label(path: Path, vertices: np.ndarray) -> None:
    """FreeSurfer ASCII .label: comment, count, then 'vno x y z value' lines."""
    lines = ["#!ascii label, from neuromem tests", str(len(vertices))]
    lines += [f"{v} 0.0 0.0 0.0 0.0" for v in vertices]
    path.write_text("\n".join(lines) + "\n")


def test_label_files_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    lh_a, lh_b = rng.choice(10242, 40, replace=False), np.arange(5000, 5030)
    rh_a = np.concatenate([rng.choice(10242, 20, replace=False), [20000, 163841]])  # fsaverage ids
    for name, vertices in [("lh.FFA", lh_a), ("lh.PPA", lh_b), ("rh.FFA", rh_a), ("rh.PPA", lh_b)]:
        _write_label(tmp_path / f"{name}.label", vertices)
    toy = load_atlas(
        [tmp_path / "lh.FFA.label", tmp_path / "lh.PPA.label"],
        [tmp_path / "rh.FFA.label", tmp_path / "rh.PPA.label"],
    )
    assert toy.areas == ["FFA", "PPA"] and toy.name == tmp_path.name
    lh_ffa = set(lh_a) - set(lh_b)  # the later file wins on overlaps
    assert set(toy.vertices(["FFA"], "left")) == lh_ffa
    assert set(toy.vertices(["FFA"], "right")) == {10242 + v for v in rh_a if v < 10242}
    _write_label(tmp_path / "rh.bad.label", np.array([1, 200000]))
    with pytest.raises(VertexCountError, match="163842"):
        load_atlas([tmp_path / "lh.FFA.label"], [tmp_path / "rh.bad.label"])


def _write_mgh(path: Path, values: np.ndarray) -> None:
    nib.MGHImage(values.astype(np.float32).reshape(-1, 1, 1), np.eye(4)).to_filename(str(path))


def test_mgh_with_name_table_file_and_bilateral_mgz(tmp_path):
    lh, rh = np.clip(_labels_hemi(3), 0, None), np.clip(_labels_hemi(4), 0, None)
    _write_mgh(tmp_path / "lh.toy.mgh", lh)
    _write_mgh(tmp_path / "rh.toy.mgh", rh)
    (tmp_path / "lut.txt").write_text(
        "# label name r g b a\n0 Unknown 0 0 0 0\n1 A 1 2 3 0\n2 B 4 5 6 0\n"
    )
    toy = load_atlas(tmp_path / "lh.toy.mgh", tmp_path / "rh.toy.mgh", names=tmp_path / "lut.txt")
    assert toy.areas == ["A", "B"]
    np.testing.assert_array_equal(toy.labels_v, np.concatenate([lh, rh]))
    _write_mgh(tmp_path / "both.mgz", np.concatenate([lh, rh]))
    both = load_atlas(bilateral=tmp_path / "both.mgz")
    assert both.areas == ["1", "2"]  # no table: areas named by label value
    np.testing.assert_array_equal(both.labels_v, toy.labels_v)


def _write_gifti_labels(path: Path, values: np.ndarray, names: dict[int, str]) -> None:
    table = nib.gifti.GiftiLabelTable()
    for key, name in names.items():
        label = nib.gifti.GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
        label.label = name
        table.labels.append(label)
    array = nib.gifti.GiftiDataArray(values.astype(np.int32), intent="NIFTI_INTENT_LABEL")
    nib.save(nib.gifti.GiftiImage(darrays=[array], labeltable=table), str(path))


def test_gifti_label_round_trip(tmp_path):
    lh, rh = np.clip(_labels_hemi(5), 0, None), np.clip(_labels_hemi(6), 0, None)
    names = {0: "???", 1: "scene", 2: "face"}
    _write_gifti_labels(tmp_path / "lh.cat.label.gii", lh, names)
    _write_gifti_labels(tmp_path / "rh.cat.label.gii", rh, names)
    cat = load_atlas(tmp_path / "lh.cat.label.gii", tmp_path / "rh.cat.label.gii")
    assert cat.name == "cat" and cat.areas == ["scene", "face"]
    np.testing.assert_array_equal(
        cat.vertices(["face"]), np.flatnonzero(np.concatenate([lh, rh]) == 2)
    )


def test_wrong_vertex_counts_name_the_expected_counts(tmp_path):
    _write_mgh(tmp_path / "lh.small.mgh", np.ones(5000))
    _write_mgh(tmp_path / "rh.small.mgh", np.ones(10242))
    with pytest.raises(VertexCountError, match=r"5000.*10242.*163842"):
        load_atlas(tmp_path / "lh.small.mgh", tmp_path / "rh.small.mgh")
    _write_mgh(tmp_path / "both.mgh", np.ones(10242))
    with pytest.raises(VertexCountError, match="20484"):
        load_atlas(bilateral=tmp_path / "both.mgh")


def test_bad_atlas_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_atlas(tmp_path / "lh.none.annot", tmp_path / "rh.none.annot")
    (tmp_path / "lh.x.csv").write_text("1\n")
    with pytest.raises(InputError, match="unknown atlas format"):
        load_atlas(tmp_path / "lh.x.csv", tmp_path / "lh.x.csv")
    _write_mgh(tmp_path / "lh.frac.mgh", np.full(10242, 0.5))
    with pytest.raises(InputError, match="non-integer"):
        load_atlas(tmp_path / "lh.frac.mgh", tmp_path / "lh.frac.mgh")
    (tmp_path / "lut.txt").write_text("# comment\n\n7 x 1 2 3 0  # trailing comment\n")
    assert atlas_mod.read_name_table(tmp_path / "lut.txt") == {7: "x"}
    (tmp_path / "bad.txt").write_text("V1 1\n")
    with pytest.raises(InputError, match="bad.txt:1"):
        atlas_mod.read_name_table(tmp_path / "bad.txt")
