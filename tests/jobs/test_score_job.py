"""End-to-end tests of `neuromem score`: real Ray, real files, real Parquet read back."""

from __future__ import annotations

import contextlib
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

from neuromem.cli import main
from neuromem.cortex.rois import load_roi_set
from neuromem.data import list_rows, synthetic
from neuromem.data.decode import decode_image
from neuromem.encoders import load_encoder
from neuromem.jobs.score import ScoreConfig, run_score
from neuromem.runtime.storage import PartWriter, part_name
from neuromem.scoring.table import open_table, read_metadata, read_vertices

ENCODER = "clip-probe:tiny"

pytestmark = pytest.mark.ray  # some tests start Ray in a subprocess or through run_score


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


def _start_driver(root, out) -> tuple[subprocess.Popen, list[str]]:
    """``python -m pipelines.score`` in its own session (it starts its own local Ray), returned
    once it reports a written part, with the lines of its stderr so far."""
    command = [
        sys.executable, "-m", "pipelines.score", "-v", "--dataset", "lamem", "--root", str(root),
        "--encoder", ENCODER, "--out", str(out), "--batch-size", "2", "--rows-per-part", "4",
        "--no-progress",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    wrote = threading.Event()
    stderr_lines: list[str] = []

    def watch(stream):
        for line in stream:
            stderr_lines.append(line)
            if "wrote part" in line:
                wrote.set()

    threading.Thread(target=watch, args=(driver.stderr,), daemon=True).start()
    assert wrote.wait(timeout=300), "the driver wrote no part"
    return driver, stderr_lines


def test_ctrl_c_then_a_killed_run_resume_exactly_once(ray_local, tmp_path):
    """Interrupted twice (Ctrl-C, then SIGKILL of a rerun), then resumed: every row once."""
    root, out = tmp_path / "lamem", tmp_path / "scores"
    truth = synthetic.write_lamem(root, n_images=120, seed=7, image_size=32)

    driver, stderr_lines = _start_driver(root, out)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    stdout, _ = driver.communicate(timeout=300)
    assert driver.returncode == 130, (stdout, stderr_lines[-5:])
    assert "interrupted: the parts written so far are kept" in stdout and "scored " in stdout
    leftovers = [p for p in psutil.process_iter() if _session(p.pid) == driver.pid]
    _, alive = psutil.wait_procs(leftovers, timeout=60)
    assert not alive, f"Ray processes left behind: {[p.name() for p in alive]}"
    after_ctrl_c = PartWriter(str(out)).written_keys()
    assert 0 < len(after_ctrl_c) < len(truth)

    # the rerun resumes, writes a part and is killed (SIGKILL) like a job on a lost machine
    driver, _ = _start_driver(root, out)
    driver.kill()
    driver.communicate()
    # the whole job dies at once: its Ray processes too (they share the driver's session),
    # instead of waiting for Ray's fate sharing to stop them
    leftovers = [p for p in psutil.process_iter() if _session(p.pid) == driver.pid]
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(leftovers, timeout=60)
    assert driver.returncode == -signal.SIGKILL
    written = PartWriter(str(out)).written_keys()
    assert set(after_ctrl_c) < set(written) and len(written) < len(truth), (
        "the rerun must add parts and be killed midway")

    # resumed on the session's Ray with other batching (settings that do not change a row)
    summary = run_score(ScoreConfig(dataset="lamem", root=str(root), encoder=ENCODER,
                                    out=str(out), batch_size=16, no_progress=True))
    assert summary.skipped == len(written)
    assert summary.rows == len(truth) - len(written) and summary.errors == 0
    ids = open_table(out).to_table(columns=["image_id"]).column(0).to_pylist()
    assert sorted(ids) == sorted(truth["image_id"])


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


# --- a user's mistakes: every one gives one line and loses nothing ---------------------------


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    synthetic.write_image_folder(root, n_images=6, seed=1, csv=True)
    return root


def score(*arguments: str) -> int:
    return main(["score", "--dataset", "folder", "--encoder", ENCODER, "--batch-size", "4",
                 "--no-progress", *arguments])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuromem: error: "), err
    return err[0]


def test_rerun_with_other_settings_refuses_and_overwrite_replaces(ray_local, folder, tmp_path,
                                                                  capsys):
    out = tmp_path / "scores"
    assert score("--root", str(folder), "--out", str(out)) == 0
    parts = sorted(out.glob("part-*.parquet"))
    capsys.readouterr()
    assert score("--root", str(folder), "--out", str(out), "--keep-vertices") == 2
    line = one_line_error(capsys)
    assert "keep_vertices: False → True" in line and "--overwrite" in line
    assert sorted(out.glob("part-*.parquet")) == parts  # nothing mixed in
    assert score("--root", str(folder), "--out", str(out), "--rois",
                 str(_two_roi_yaml(tmp_path))) == 2
    assert "rois" in one_line_error(capsys)
    assert score("--root", str(folder), "--out", str(out), "--keep-vertices", "--overwrite") == 0
    assert read_vertices(out).shape == (6, 20484)  # the old parts (no vertices) are gone


def _two_roi_yaml(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: two\natlas: glasser\nrois:\n  early: [V1, V2]\n  face: [FFC]\n")
    return path


def test_a_foreign_parquet_file_in_out_is_named(ray_local, folder, tmp_path, capsys):
    out = tmp_path / "scores"
    out.mkdir()
    pd.DataFrame({"x": [1, 2]}).to_parquet(out / "notes.parquet")
    assert score("--root", str(folder), "--out", str(out)) == 2
    assert "notes.parquet" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.parquet"]


def test_retry_errors_rescores_and_clears_them(ray_local, folder, tmp_path, capsys):
    out = tmp_path / "scores"
    images = sorted(list_rows("folder", folder)["image_id"])
    victim = folder / images[0]
    good = victim.read_bytes()
    victim.write_bytes(b"not an image")
    assert score("--root", str(folder), "--out", str(out)) == 0
    assert "errors: " in capsys.readouterr().out and "_errors" in str(out / "_errors")
    failed = pq.read_table(out / "_errors").column("image_id").to_pylist()
    assert len(failed) == 1
    victim.write_bytes(good)
    assert score("--root", str(folder), "--out", str(out)) == 0
    assert "nothing to do" in capsys.readouterr().out  # failures are not retried unasked
    assert score("--root", str(folder), "--out", str(out), "--retry-errors") == 0
    printed = capsys.readouterr().out
    assert "scored 1 rows" in printed and "1 earlier errors retried" in printed
    assert sorted(open_table(out).to_table(columns=["image_id"]).column(0).to_pylist()) == images
    assert not list((out / "_errors").glob("*.parquet"))  # the cleared error is gone


def test_no_row_scored_exits_non_zero_and_says_where_the_errors_are(ray_local, tmp_path, capsys):
    root = tmp_path / "broken"
    synthetic.write_image_folder(root, n_images=3, seed=2)
    for image_id in list_rows("folder", root)["image_id"]:
        (root / image_id).write_bytes(b"\x89PNG truncated")
    out = tmp_path / "scores"
    assert score("--root", str(root), "--out", str(out)) == 2
    line = one_line_error(capsys)
    assert "none of the 3 images" in line and str(out / "_errors") in line
    assert len(pq.read_table(out / "_errors")) == 3


def test_bad_arguments_fail_in_one_line_before_ray_and_leave_no_output(folder, tmp_path, capsys):
    import ray

    ray_was_running = ray.is_initialized()  # (under `-m "not ray"` it is not, and must stay so)
    out = tmp_path / "scores"
    cases = [
        (["--encoder", "clip:tiny"], "unknown encoder 'clip:tiny'"),
        (["--encoder", f"clip-probe:{tmp_path / 'missing.safetensors'}"], "does not exist"),
        (["--rois", str(tmp_path / "nope.yaml")], "nope.yaml"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--rows-per-part", "0"], "--rows-per-part must be at least 1"),
    ]
    for extra, message in cases:
        code = main(["score", "--dataset", "folder", "--root", str(folder), "--out", str(out),
                     "--encoder", ENCODER, "--no-progress", *extra])
        assert code == 2 and message in one_line_error(capsys), extra
        assert not out.exists() and ray.is_initialized() == ray_was_running
    assert score("--root", str(tmp_path / "nowhere"), "--out", str(out)) == 2
    assert "nowhere" in one_line_error(capsys)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for bad_out in (blocker / "scores", "/proc/neuromem-scores"):  # not a folder; read-only
        assert score("--root", str(folder), "--out", str(bad_out)) == 2
        assert "cannot write to" in one_line_error(capsys)


def test_an_error_inside_an_actor_is_one_line(ray_local, folder, tmp_path, capsys):
    probe = tmp_path / "corrupt.safetensors"
    probe.write_bytes(b"garbage, not a probe")
    code = main(["score", "--dataset", "folder", "--root", str(folder), "--out",
                 str(tmp_path / "scores"), "--encoder", f"clip-probe:{probe}", "--no-progress"])
    assert code == 2
    assert "is not a safetensors file" in one_line_error(capsys)


def test_files_that_are_not_images_are_counted(ray_local, folder, tmp_path, capsys):
    (folder / "holiday.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "notes.txt").write_text("x")
    assert score("--root", str(folder), "--out", str(tmp_path / "scores")) == 0
    printed = capsys.readouterr().out
    assert "files that are not images, not scored: 1 .csv, 1 .heic, 1 .txt" in printed  # csv: scores


