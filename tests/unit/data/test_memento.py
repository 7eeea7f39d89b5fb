"""Memento10K listing on its layout; video payloads decode to the written frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuromem.data import list_rows, load_payloads, synthetic
from neuromem.data.decode import decode_video
from neuromem.data.schema import rows_to_arrow
from neuromem.errors import InputError


@pytest.fixture(scope="module")
def memento_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("memento")
    return root, synthetic.write_memento(root, n_videos=6, seed=7, n_frames=6, side=48)


def test_memento_listing(memento_root):
    root, truth = memento_root
    rows = list_rows("memento10k", root)
    assert len(rows) == 6 and rows["alpha"].dtype == np.float64
    merged = rows.merge(truth, left_on="image_id", right_on="filename", suffixes=("", "_truth"))
    assert len(merged) == 6
    np.testing.assert_allclose(merged["memorability"], merged["mem_score"])
    np.testing.assert_allclose(merged["alpha"], merged["alpha_truth"])
    assert (merged["split"] == merged["split_truth"]).all()
    val = list_rows("memento10k", root, split="val")
    assert set(val["image_id"]) == set(truth.loc[truth["split"] == "val", "filename"])
    with pytest.raises(InputError, match="unknown"):
        list_rows("memento10k", root, split="dev")


def test_memento_bad_json(tmp_path):
    (tmp_path / "memento_train_data.json").write_text(json.dumps({"filename": "a.mp4"}))
    with pytest.raises(InputError, match="list of records"):
        list_rows("memento10k", tmp_path)


def test_memento_payloads_are_videos(memento_root):
    root, truth = memento_root
    loaded = load_payloads(rows_to_arrow(list_rows("memento10k", root, split="train"))).to_pandas()
    assert len(loaded) == 2 and (loaded["media"] == "video").all()
    frames_thw3, _ = decode_video(loaded["payload"][0], n_frames=3)
    assert frames_thw3.shape == (3, 48, 48, 3)


def test_memento_video_listed_in_two_splits_is_refused(tmp_path):
    record = [{"filename": "1.mp4", "mem_score": 0.9, "alpha": -0.01}]
    for split in ("train", "val"):
        (tmp_path / f"memento_{split}_data.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="must be unique"):
        list_rows("memento10k", tmp_path)
