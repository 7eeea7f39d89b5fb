"""End-to-end tests of `neuromem score`: real Ray, real files, real Parquet read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import torch

from neuromem.cortex.rois import load_roi_set
from neuromem.data import synthetic
from neuromem.data.decode import decode_image
from neuromem.encoders import load_encoder
from neuromem.jobs.score import ScoreConfig, run_score
from neuromem.runtime.storage import PartWriter, part_name
from neuromem.scoring.table import open_table, read_metadata, read_vertices

ENCODER = "clip-probe:tiny"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(ENCODER, "cpu")


@pytest.fixture(scope="module")
def roi_set():
    return load_roi_set("default")


def expected_responses(encoder, payloads: list[bytes]) -> np.ndarray:
    """Encoder responses computed directly in this process, float32 (N, 20484)."""
    pixels = np.stack([decode_image(p, "image", encoder.input_size) for p in payloads])
    with torch.no_grad():
        return encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).numpy()


def check_rois(frame, responses_nv, roi_set):
    """ROI columns are float32 means over each ROI's vertices (computed here with numpy)."""
    for name in roi_set.names:
        column = frame[f"roi_{name}"]
        assert column.dtype == np.float32
        expected = responses_nv[:, roi_set.indices[name]].mean(axis=1)
        np.testing.assert_allclose(column.to_numpy(), expected, rtol=1e-4, atol=1e-6)


def test_part_names_depend_only_on_ids():
    assert part_name(["b", "a"]) == part_name(["a", "b"])
    assert part_name(["a", "b"]) != part_name(["a", "c"])


def test_lamem_scores_errors_and_resume(ray_local, tmp_path, encoder, roi_set):
    root, out = tmp_path / "lamem", tmp_path / "scores"
    truth = synthetic.write_lamem(root, n_images=20, seed=3, image_size=64)
    (root / "images" / "00000004.jpg").write_bytes(b"not a jpeg at all")
    good = (root / "images" / "00000009.jpg").read_bytes()
    (root / "images" / "00000009.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (root / "images" / "00000006.jpg").unlink()  # listed in the split files, gone from disk
    bad = {"00000004.jpg", "00000006.jpg", "00000009.jpg"}
    config = dict(dataset="lamem", root=str(root), encoder=ENCODER, out=str(out),
                  keep_vertices=True, batch_size=4, no_progress=True)

    # A first run over the first 12 rows, then a run over all 20 scores only the other 8.
    first = run_score(ScoreConfig(limit=12, **config))
    assert (first.rows, first.errors, first.skipped) == (9, 3, 0)
    stale = out / ".tmp-0123-part-deadbeef.parquet"  # what a killed writer leaves
    stale.write_bytes(b"PAR1 half written")
    second = run_score(ScoreConfig(**config))
    assert (second.rows, second.errors, second.skipped) == (8, 0, 12)
    assert not stale.exists()
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    third = run_score(ScoreConfig(**config))
    assert (third.rows, third.errors, third.skipped) == (0, 0, 20)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == parts

    frame = open_table(out).to_table().to_pandas()
    assert len(frame) == 17 and frame["image_id"].is_unique
    assert len(pd.read_parquet(out)) == 17  # pandas reads the table without the errors
    assert set(frame["image_id"]) == set(truth["image_id"]) - bad
    assert (frame["encoder"] == ENCODER).all() and (frame["dataset"] == "lamem").all()
    frame = frame.sort_values("image_id").reset_index(drop=True)
    scores = truth.set_index("image_id").loc[frame["image_id"], "memorability"]
    np.testing.assert_allclose(frame["memorability"], scores, atol=1e-9)

    errors = pq.read_table(out / "_errors").to_pandas()
    assert sorted(errors["image_id"]) == sorted(bad)
    assert (errors["stage"] == "decode").all() and errors["error"].str.len().gt(0).all()
    assert "not found" in errors.set_index("image_id").loc["00000006.jpg", "error"]
    assert errors["source"].str.endswith(tuple(bad)).all()

    payloads = [(root / "images" / i).read_bytes() for i in frame["image_id"]]
    responses_nv = expected_responses(encoder, payloads)
    check_rois(frame, responses_nv, roi_set)
    order = np.argsort(open_table(out).to_table(columns=["image_id"]).column(0).to_numpy(
        zero_copy_only=False))
    vertices_nv = read_vertices(out, dtype=np.float32)[order]
    np.testing.assert_allclose(vertices_nv, responses_nv, rtol=1e-3, atol=1e-4)

    metadata = read_metadata(out)
    assert metadata["encoder"]["spec"] == ENCODER
    assert metadata["encoder"]["weights_sha256"] == encoder.metadata()["weights_sha256"]
    assert metadata["encoder"]["trained"] is False
    assert metadata["rois"] == roi_set.to_dict() and metadata["atlas"] == roi_set.atlas
    assert metadata["neuromem_version"] and metadata["created"] and metadata["dataset"] == "lamem"
    assert PartWriter(str(out)).written_keys() == set(frame["image_id"])
    for part in out.glob("part-*.parquet"):  # vertices stored plain, so they read back fast
        meta = pq.ParquetFile(part).metadata
        column = meta.row_group(0).column(meta.schema.names.index("vertices"))
        assert column.compression == "UNCOMPRESSED" and not column.has_dictionary_page


def test_killed_run_resumes_exactly_once(ray_local, tmp_path):
    root, out = tmp_path / "lamem", tmp_path / "scores"
    truth = synthetic.write_lamem(root, n_images=200, seed=6, image_size=32)
    command = [
        sys.executable, "-m", "pipelines.score", "-v", "--dataset", "lamem", "--root", str(root),
        "--encoder", ENCODER, "--out", str(out), "--batch-size", "2", "--rows-per-part", "4", "--no-progress",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # The driver starts its own local Ray; kill it (SIGKILL) as soon as it reports a part.
    driver = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True, start_new_session=True)
    wrote = threading.Event()

    def watch(stream):
        for line in stream:
            if "wrote part" in line:
                wrote.set()

    threading.Thread(target=watch, args=(driver.stderr,), daemon=True).start()
    assert wrote.wait(timeout=300), "the driver wrote no part"
    driver.kill()
    driver.wait()
    # Ray's processes of the killed run exit with their driver (fate sharing): wait for them.
    leftovers = [p for p in psutil.process_iter() if _session(p.pid) == driver.pid]
    psutil.wait_procs(leftovers, timeout=120)
    assert driver.returncode == -signal.SIGKILL
    written = PartWriter(str(out)).written_keys()
    assert 0 < len(written) < len(truth), "the run must be killed midway"

    summary = run_score(ScoreConfig(dataset="lamem", root=str(root), encoder=ENCODER,
                                        out=str(out), batch_size=16, no_progress=True))
    assert summary.skipped == len(written)
    assert summary.rows == len(truth) - len(written) and summary.errors == 0
    ids = open_table(out).to_table(columns=["image_id"]).column(0).to_pylist()
    assert len(ids) == len(truth) and set(ids) == set(truth["image_id"])


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None
