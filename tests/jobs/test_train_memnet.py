"""End-to-end test of ``neuromem train-memnet`` (Ray Train, DDP over 2 gloo workers) at tiny
size: pixels decoded on the image-map engine with bad images isolated, training, assessment
against the checkpoint's own predictions, and the rerun rules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from neuromem.cli import main
from neuromem.data.decode import decode_image
from neuromem.data.lamem import list_lamem
from neuromem.data.synthetic import write_lamem
from neuromem.representations.memnet import build_memnet, load_memnet
from neuromem.runtime.storage import read_bytes


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("memnet")
    truth = write_lamem(root / "lamem", n_images=60, image_size=32)
    truth[["image_id", "category"]].to_csv(root / "categories.csv", index=False)
    rows = list_lamem(root / "lamem")
    test_ids = set(list_lamem(root / "lamem", split="test_1")["image_id"])
    train_ids = set(truth.loc[truth["split_1"] == "train", "image_id"])
    broken = [next(i for i in rows["image_id"] if i in test_ids),  # corrupt test image
              next(i for i in rows["image_id"] if i in train_ids)]  # missing training image
    (root / "lamem" / "images" / broken[0]).write_bytes(b"not a jpeg")
    (root / "lamem" / "images" / broken[1]).unlink()
    argv = ["train-memnet", "--lamem-root", f"file://{root / 'lamem'}",
            "--categories", str(root / "categories.csv"), "--network", "timm:test_resnet",
            "--image-size", "32", "--task", "both", "--memorability-weight", "2",
            "--category-weight", "0.5", "--split", "1", "--epochs", "2", "--batch-size", "16",
            "--lr", "1e-3", "--workers", "2", "--cpus-per-worker", "0.5",
            "--gpus-per-worker", "0", "--out", str(root / "run"), "--no-progress"]
    assert main(argv) == 0
    return {"root": root, "out": root / "run", "truth": truth, "broken": broken, "argv": argv,
            "train_ids": train_ids}


def test_training_writes_a_checkpoint_with_its_settings(run):
    net, config = load_memnet(run["out"] / "split_1")
    assert config["task"] == "both" and config["categories"] == ["object", "scene"]
    assert config["training"]["memorability_weight"] == 2 and config["epoch"] == 1
    assert config["training"]["n_train"] == len(run["train_ids"]) - 1  # the missing image
    initial, _ = build_memnet("timm:test_resnet", "both", 2, image_size=32)
    assert not torch.allclose(net.memorability_head.weight, initial.memorability_head.weight)


def test_assessment_is_the_checkpoints_spearman_rho_on_readable_test_images(run):
    net, config = load_memnet(run["out"] / "split_1")
    rows = list_lamem(run["root"] / "lamem", split="test_1")
    rows = rows[~rows["image_id"].isin(run["broken"])]
    pixels = np.stack([decode_image(read_bytes(s), size=32) for s in rows["source"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    with torch.no_grad():
        predicted = net((images - mean) / std)["memorability"].numpy()
    table = pd.read_parquet(run["out"] / "assess.parquet")
    assert table["split"].tolist() == ["test_1"] and table["n"].tolist() == [len(rows)]
    want = stats.spearmanr(predicted, rows["memorability"]).statistic
    assert table["rho"].iloc[0] == pytest.approx(want, abs=1e-5)
    summary = json.loads((run["out"] / "assess.json").read_text())
    assert summary[0]["assessor"] == "memnet:timm:test_resnet:both"


def test_bad_images_are_in_the_pixel_errors_and_left_out(run):
    errors = pq.read_table(run["out"] / "pixels" / "_errors").to_pandas()
    assert sorted(errors["image_id"]) == sorted(run["broken"])
    pixels = pq.read_table(run["out"] / "pixels", columns=["image_id"]).column(0).to_pylist()
    assert len(pixels) == 58 and not set(pixels) & set(run["broken"])


def test_rerun_reuses_the_checkpoint_and_refuses_other_settings(run, capsys):
    before = (run["out"] / "split_1" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(run["argv"]) == 0
    assert "reused the checkpoints of split(s) 1" in capsys.readouterr().out
    assert (run["out"] / "split_1" / "model.safetensors").read_bytes() == before
    changed = [a if a != "1e-3" else "1e-2" for a in run["argv"]]
    assert main(changed) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "lr: 0.001 → 0.01" in error


def test_input_errors_are_one_line(tmp_path, capsys):
    write_lamem(tmp_path / "lamem", n_images=12, image_size=16)
    base = ["train-memnet", "--lamem-root", str(tmp_path / "lamem"), "--no-progress"]
    cases = [
        (["--split", "7"], "--split must be one of"),
        (["--network", "torchvision:nope"], "torchvision has no model"),
        (["--task", "both"], "needs at least 2 category labels"),
        (["--lr", "0"], "--lr must be > 0"),
    ]
    for extra, message in cases:
        assert main(base + extra + ["--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "out").exists()
