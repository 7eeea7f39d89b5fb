"""`neuromem score --encoder tribev2:tiny` with each still-image protocol on the folder, LaMem and
Memento10K fixtures, and `--keep-timecourse` read back: one Ray session, a few tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromem.cli import main
from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.data import synthetic
from neuromem.data.decode import decode_image
from neuromem.encoders import load_encoder
from neuromem.errors import InputError
from neuromem.jobs.score import ScoreConfig, run_score
from neuromem.scoring.table import open_table, read_metadata
from neuromem.scoring.timecourse import score_table_timecourses

pytestmark = pytest.mark.ray

ENCODER = "tribev2:tiny"


@pytest.fixture(scope="module")
def reducer():
    return RoiReducer(load_roi_set("default"))


@pytest.fixture(scope="module")
def tribe():
    return load_encoder(ENCODER, "cpu")


def rois_of(table, reducer) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in reducer.column_names], axis=1)


def sorted_table(out):
    return open_table(out).to_table().sort_by("image_id")


def test_each_protocol_on_stills(ray_local, tmp_path, tribe, reducer, capsys):
    folder = tmp_path / "folder"
    synthetic.write_image_folder(folder, n_images=2, seed=5, image_size=48)
    lamem = tmp_path / "lamem"
    synthetic.write_lamem(lamem, n_images=2, seed=6, n_splits=1, image_size=40)
    results = {}
    for protocol, (dataset, root) in [("paper", ("folder", folder)), ("static", ("lamem", lamem)),
                                      ("fast", ("folder", folder))]:
        out = tmp_path / f"{dataset}-{protocol}"
        assert main(["score", "--dataset", dataset, "--root", str(root), "--encoder", ENCODER,
                     "--protocol", protocol, "--out", str(out), "--batch-size", "2",
                     "--no-progress"]) == 0
        table = sorted_table(out)
        metadata = read_metadata(out)
        assert metadata["protocol"] == protocol == metadata["encoder"]["protocol"]
        assert metadata["settings"]["protocol"] == protocol
        images = [decode_image(open(path, "rb").read(), "image", None)
                  for path in table.column("source").to_pylist()]
        with torch.no_grad():
            expected_bv = tribe.with_protocol(protocol).forward_stills(images)
        np.testing.assert_allclose(rois_of(table, reducer), reducer(expected_bv).numpy(),
                                   rtol=1e-4, atol=1e-6)
        results[protocol, dataset] = rois_of(table, reducer)
    assert not np.allclose(results["paper", "folder"], results["fast", "folder"])
    with pytest.raises(InputError, match="protocol: 'static' → 'fast'"):
        run_score(ScoreConfig(dataset="lamem", root=str(lamem), encoder=ENCODER, protocol="fast",
                              out=str(tmp_path / "lamem-static"), no_progress=True))
    assert main(["score", "--dataset", "folder", "--root", str(folder), "--encoder",
                 "clip-probe:tiny", "--protocol", "paper", "--out", str(tmp_path / "c")]) == 2
    assert "no still-image protocols" in capsys.readouterr().err


def test_memento_time_courses_round_trip(ray_local, tmp_path, tribe, reducer):
    root = tmp_path / "memento"
    synthetic.write_memento(root, n_videos=2, seed=7, n_frames=12, side=48, fps=8)
    out = tmp_path / "scores"
    summary = run_score(ScoreConfig(dataset="memento10k", root=str(root), encoder=ENCODER,
                                    protocol="static", out=str(out), keep_timecourse=True,
                                    keep_vertices=True, batch_size=2, no_progress=True))
    assert (summary.rows, summary.errors) == (2, 0)
    table = sorted_table(out)
    metadata = read_metadata(out)
    assert metadata["settings"]["keep_timecourse"] is True
    assert metadata["protocol"] == "static"
    courses = score_table_timecourses(table, metadata["timecourse"]["step_seconds"])
    assert courses.step_seconds == 1.0
    with torch.no_grad():
        expected = [reducer(tribe.video_timecourse(tribe.read_video(open(path, "rb").read())))
                    .numpy() for path in table.column("source").to_pylist()]
    assert [c.shape for c in courses.responses] == [(2, len(reducer.names))] * 2  # 1.5 s
    for stored_tr, expected_tr in zip(courses.responses, expected, strict=True):
        np.testing.assert_allclose(stored_tr, expected_tr, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rois_of(table, reducer), courses.means(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="keep_timecourse"):
        run_score(ScoreConfig(dataset="memento10k", root=str(root), encoder=ENCODER,
                              protocol="static", out=str(out), no_progress=True))
    with pytest.raises(InputError, match="leave --clip-frames out"):
        run_score(ScoreConfig(dataset="memento10k", root=str(root), encoder=ENCODER,
                              clip_frames=4, out=str(tmp_path / "other"), no_progress=True))
