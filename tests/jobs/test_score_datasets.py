"""`neuromem score` on NSD (HDF5 brick, decoding in Ray tasks), Memento10K (clips) and BOLD5000."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import torch

from neuromem.data import synthetic
from neuromem.data.bold5000 import measured_table
from neuromem.data.decode import decode_image, decode_video
from neuromem.data.schema import array_media
from neuromem.encoders import load_encoder
from neuromem.jobs.score import ScoreConfig, run_score
from neuromem.scoring.table import open_table, read_metadata, read_vertices

ENCODER = "clip-probe:tiny"


def scored(out) -> pd.DataFrame:
    """The score table with its vertices as float32 rows, sorted by image_id."""
    frame = open_table(out).to_table().to_pandas()
    frame["vertices_v"] = list(read_vertices(out, dtype=np.float32))
    return frame.sort_values("image_id").reset_index(drop=True)


def test_nsd_and_memento(ray_local, tmp_path):
    encoder = load_encoder(ENCODER, "cpu")
    size = encoder.input_size

    nsd_root = tmp_path / "nsd"
    truth = synthetic.write_nsd(nsd_root, n_images=6, seed=1)
    summary = run_score(ScoreConfig(
        dataset="nsd", root=str(nsd_root), encoder=ENCODER, out=str(tmp_path / "nsd_scores"),
        keep_vertices=True, batch_size=4, decode="tasks", no_progress=True,
    ))
    assert (summary.rows, summary.errors) == (6, 0)
    frame = scored(tmp_path / "nsd_scores")
    assert list(frame["nsdId"]) == sorted(truth["nsdId"])
    assert {"cocoId", "shared1000", "subject1"} <= set(frame.columns)
    brick = nsd_root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
    with h5py.File(brick, "r") as fh:
        pixels = np.stack([
            decode_image(fh["imgBrick"][i].tobytes(), array_media(425, 425), size)
            for i in frame["nsdId"]
        ])
    with torch.no_grad():
        expected = encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(np.stack(frame["vertices_v"]), expected, rtol=1e-3, atol=1e-4)

    memento_root = tmp_path / "memento"
    videos = synthetic.write_memento(memento_root, n_videos=3, seed=2, n_frames=6, side=48)
    (memento_root / "videos" / videos["filename"][0]).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    summary = run_score(ScoreConfig(
        dataset="memento10k", root=str(memento_root), encoder=ENCODER, clip_frames=4,
        out=str(tmp_path / "memento_scores"), keep_vertices=True, batch_size=2, no_progress=True,
    ))
    assert (summary.rows, summary.errors) == (2, 1)
    frame = scored(tmp_path / "memento_scores")
    assert list(frame["image_id"]) == sorted(videos["filename"][1:])
    clips = np.stack([
        decode_video((memento_root / "videos" / name).read_bytes(), 4, size)[0]
        for name in frame["image_id"]
    ])
    with torch.no_grad():
        clips_bt3hw = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255
        expected = encoder.forward_clips(clips_bt3hw).numpy()
    np.testing.assert_allclose(np.stack(frame["vertices_v"]), expected, rtol=1e-3, atol=1e-4)
    errors = pd.read_parquet(tmp_path / "memento_scores" / "_errors")
    assert list(errors["image_id"]) == [videos["filename"][0]]


def test_bold5000_measured_table(tmp_path):
    root, out = tmp_path / "bold5000", tmp_path / "scores"
    synthetic.write_bold5000(root, n_stimuli=6, seed=0)
    expected = measured_table(root).sort_values(["subject", "image_id"]).reset_index(drop=True)
    config = ScoreConfig(dataset="bold5000", root=str(root), encoder="-", out=str(out),
                         batch_size=5, no_progress=True)
    assert run_score(config).rows == len(expected)
    again = run_score(config)
    assert (again.rows, again.skipped) == (0, len(expected))
    frame = pd.read_parquet(out).sort_values(["subject", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert frame["roi_lh_PPA"].dtype == np.float32
    assert read_metadata(out)["encoder"]["spec"].startswith("measured:BOLD5000")
