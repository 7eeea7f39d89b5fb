"""Brain signals, held-out images and job arrays of decoding (neuromem.decoding.signals)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.decoding.embeddings import check_finite
from neuromem.decoding.signals import (
    held_out_images,
    prepare_job,
    read_npz_signals,
    read_sources,
    read_table_signals,
)
from neuromem.errors import InputError


def test_npz_and_table_signals_through_uris(tmp_path):
    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((6, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "eeg.npz", signals=eeg, image_id=np.array(list("abcabc")))
    signals = read_npz_signals(f"file://{tmp_path}/eeg.npz")
    np.testing.assert_array_equal(signals.values, eeg)
    assert signals.subjects.tolist() == ["all"] * 6
    assert signals.keep({"a"}).values.shape == (2, 3, 4)
    np.savez(tmp_path / "bad.npz", values=eeg)
    with pytest.raises(InputError, match="missing array 'signals'"):
        read_npz_signals(str(tmp_path / "bad.npz"))
    table = pa.table({"image_id": ["a", "b", "a"], "source": ["/a.jpg", "/b.jpg", "/a.jpg"],
                      "subject": ["s1", "s1", "s2"], "roi_FFA": [1.0, 2.0, 3.0],
                      "roi_PPA": [4.0, 5.0, 6.0]})
    pq.write_table(table, tmp_path / "brain.parquet")
    brain = read_table_signals(f"file://{tmp_path}/brain.parquet", "rois")
    np.testing.assert_array_equal(brain.values, [[1, 4], [2, 5], [3, 6]])
    assert brain.of_subject("s2").image_ids.tolist() == ["a"]
    with pytest.raises(InputError, match="no vertices column"):
        read_table_signals(str(tmp_path / "brain.parquet"), "vertices")
    assert read_sources(str(tmp_path / "brain.parquet"), ["b", "a"]) == ["/b.jpg", "/a.jpg"]
    with pytest.raises(InputError, match="no source for 1 images"):
        read_sources(str(tmp_path / "brain.parquet"), ["c"])


def test_held_out_images_and_job_arrays():
    ids = np.array(["d", "a", "c", "b", "a", "e"])
    first = held_out_images(ids, 2, seed=4)
    assert first == held_out_images(ids[::-1], 2, seed=4)  # row order does not matter
    with pytest.raises(InputError, match="leaves no training images"):
        held_out_images(ids, 5, seed=0)
    from neuromem.decoding.signals import Signals

    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    signals = Signals(values, ids, np.full(6, "all"))
    embeddings = {i: np.full(3, ord(i), np.float32) for i in "abcde"}
    job = prepare_job(signals, embeddings, ["a"], shuffle=False, seed=0)
    train = values[ids != "a"]
    np.testing.assert_allclose(job["train_signals"],
                               (train - train.mean(0)) / (train.std(0) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(job["test_signals"][0],
                               (values[ids == "a"].mean(0) - train.mean(0)) / (train.std(0) + 1e-6),
                               rtol=1e-5)
    assert job["train_embeddings"][:, 0].tolist() == [ord(i) for i in ids[ids != "a"]]


def test_non_finite_embeddings_are_refused():
    embeddings = np.ones((4, 3), np.float32)
    check_finite("timm:x", embeddings, list("abcd"))
    embeddings[2, 1] = np.nan
    with pytest.raises(InputError, match=r"timm:x gave non-finite embeddings for 1 of 4 .*'c'"):
        check_finite("timm:x", embeddings, list("abcd"))
