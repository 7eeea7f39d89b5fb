"""``neuromem rois``: list the ROIs of a set."""

from __future__ import annotations

import json

from neuromem.cli import main


def test_rois_json(capsys):
    assert main(["rois", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["name"] == "default" and record["atlas"] == "glasser"
    rows = {row["roi"]: row for row in record["rois"]}
    assert len(rows) == 39 and record["rois"][0]["roi"] == "V1"
    assert rows["lh_V1"] == {
        "roi": "lh_V1",
        "column": "roi_lh_V1",
        "hemisphere": "left",
        "n_left": 285,
        "n_right": 0,
        "areas": ["V1"],
    }
    assert rows["PPA"]["areas"] == ["PHA1", "PHA2", "PHA3"]


def test_rois_table_with_user_set_and_bad_path(tmp_path, capsys):
    (tmp_path / "two.yaml").write_text("atlas: glasser\nrois:\n  face: [FFC]\n  place: [PHA1]\n")
    assert main(["rois", "--rois", str(tmp_path / "two.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ROI set 'two': 6 ROIs on atlas 'glasser'"
    assert lines[3].split() == ["face", "46", "54", "FFC"]
    assert lines[-1].split() == ["rh_place", "0", str(int(lines[4].split()[2])), "PHA1"]
    assert main(["rois", "--rois", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
