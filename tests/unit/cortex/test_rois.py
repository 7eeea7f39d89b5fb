"""ROI sets: the default HCP-MMP1 groups and user YAML sets."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from neuromem.cortex.atlas import load_glasser
from neuromem.cortex.rois import RoiSet, build_roi_set, load_roi_set
from neuromem.cortex.surface import mesh_coords
from neuromem.errors import InputError, UnknownNameError

BILATERAL = ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "RSC", "OPA", "EBA", "STS", "ATL", "PCC"]


@pytest.fixture(scope="module")
def default() -> RoiSet:
    return load_roi_set("default")


def test_default_order_and_columns(default):
    expected = BILATERAL + [f"lh_{r}" for r in BILATERAL] + [f"rh_{r}" for r in BILATERAL]
    assert list(default.names) == expected
    assert (
        default.column_names[:2] == ["roi_V1", "roi_V2"]
        and default.column_names[-1] == "roi_rh_PCC"
    )
    assert default.atlas == "glasser" and default.name == "default"


def test_default_rois_are_nonempty_split_by_hemisphere_and_disjoint(default):
    for roi in BILATERAL:
        left, right = default.indices[f"lh_{roi}"], default.indices[f"rh_{roi}"]
        assert left.size > 0 and right.size > 0, roi
        assert left.max() < 10242 and right.min() >= 10242
        np.testing.assert_array_equal(np.sort(np.concatenate([left, right])), default.indices[roi])
        assert default.vertex_counts(roi) == (left.size, right.size)
        assert default.definitions[f"lh_{roi}"] == default.definitions[roi]
    union = np.concatenate([default.indices[r] for r in BILATERAL])
    assert union.size == np.unique(union).size  # no vertex belongs to two default ROIs


def test_default_definitions_follow_domain_table(default):
    assert default.definitions["FFA"] == ["FFC"]
    assert default.definitions["PPA"] == ["PHA1", "PHA2", "PHA3"]
    assert default.definitions["STS"] == ["STSda", "STSdp", "STSva", "STSvp"]
    assert default.definitions["ATL"] == ["TGd", "TGv", "TE1a", "TE2a"]
    assert default.vertex_counts("V1")[0] == 285  # domain.md: left V1 has 285 vertices
    assert default.vertex_counts("FFA")[0] == 46  # domain.md: left FFC has 46 vertices


def test_default_roi_anatomy(default):
    pial_v3 = mesh_coords("pial")

    def centroid(roi):
        return pial_v3[default.indices[roi]].mean(0)

    for hemi, sign in (("lh", -1), ("rh", 1)):
        v1, ffa, atl = centroid(f"{hemi}_V1"), centroid(f"{hemi}_FFA"), centroid(f"{hemi}_ATL")
        assert sign * v1[0] > 0 and abs(v1[0]) < 20 and v1[1] < -70  # medial, posterior
        assert ffa[2] < -10 and abs(ffa[0]) > 30  # ventral temporal, lateral of V1
        assert atl[1] > -5 and atl[1] - ffa[1] > 40  # anterior temporal, far in front of FFA
        assert sign * centroid(f"{hemi}_STS")[0] > 45  # lateral surface


def test_to_dict_is_json_and_fingerprints_the_vertices(default):
    record = json.loads(json.dumps(default.to_dict()))
    assert list(record["rois"]) == list(default.names)
    assert record["rois"]["lh_FFA"] == {"areas": ["FFC"], "hemisphere": "left", "n_vertices": 46}
    moved = dict(default.indices)
    moved["V1"] = moved["V1"][1:]
    changed = RoiSet(default.name, default.atlas, default.names, moved, default.definitions)
    assert changed.to_dict()["indices_sha256"] != record["indices_sha256"]


def test_user_yaml_with_glasser(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "atlas: glasser\nrois:\n  scene: [PHA1, PHA2, PHA3, RSC]\n  face: FFC\n  motor: [4]\n"
    )
    mine = load_roi_set(tmp_path / "mine.yaml")
    assert mine.name == "mine" and mine.names[:3] == ("scene", "face", "motor")
    assert len(mine) == 9
    glasser = load_glasser()
    np.testing.assert_array_equal(
        mine.indices["lh_face"], np.flatnonzero(glasser.labels_v[:10242] == 18)
    )
    assert mine.definitions["motor"] == ["4"]  # YAML integers are area names too


def test_user_yaml_with_annot_files_relative_to_the_yaml(tmp_path):
    folder = tmp_path / "atlas"
    folder.mkdir()
    lh = np.where(np.arange(10242) < 100, 1, 0)
    ctab = np.array([[0, 0, 0, 0], [255, 0, 0, 0]], dtype=np.int32)
    nib.freesurfer.write_annot(str(folder / "lh.m.annot"), lh, ctab, ["unknown", "blob"])
    nib.freesurfer.write_annot(
        str(folder / "rh.m.annot"), np.zeros(10242, int), ctab, ["unknown", "blob"]
    )
    config = "atlas:\n  lh: atlas/lh.m.annot\n  rh: atlas/rh.m.annot\nrois:\n  B: [blob]\n"
    (tmp_path / "m.yaml").write_text(config)
    with pytest.raises(InputError, match="rh_B"):  # the blob is only in the left hemisphere
        load_roi_set(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text(config + "split_hemispheres: false\nname: blobs\n")
    blobs = load_roi_set(tmp_path / "m.yaml")
    assert blobs.names == ("B",) and blobs.name == "blobs" and blobs.atlas == "m"
    np.testing.assert_array_equal(blobs.indices["B"], np.arange(100))


def test_bad_roi_definitions(tmp_path):
    glasser = load_glasser()
    with pytest.raises(UnknownNameError, match="PHA1"):
        build_roi_set(glasser, {"PPA": ["PHA"]}, name="x")
    with pytest.raises(InputError, match="letters"):
        build_roi_set(glasser, {"bad name": ["V1"]}, name="x")
    with pytest.raises(InputError, match="hemisphere prefix"):
        build_roi_set(glasser, {"lh_V1": ["V1"]}, name="x")
    with pytest.raises(InputError, match="no atlas area"):
        build_roi_set(glasser, {"V1": []}, name="x")
    (tmp_path / "bad.yaml").write_text("atlas: glasser\nrois: {V1: [V1]}\nextra: 1\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_roi_set(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="not found"):
        load_roi_set(tmp_path / "missing.yaml")
    with pytest.raises(UnknownNameError, match="close matches: V1"):
        load_roi_set("default").check_names(["v1"])
