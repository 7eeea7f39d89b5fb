"""Memorability/category networks (neuromem.representations.memnet) and ``neuromem
train-memnet`` (Ray Train, DDP over 2 gloo workers) at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats

from neuromem.cli import main
from neuromem.data.decode import decode_image
from neuromem.data.lamem import list_lamem
from neuromem.data.readers import read_bytes
from neuromem.data.synthetic import write_lamem
from neuromem.errors import InputError
from neuromem.networks import load_model
from neuromem.representations.memnet import (
    MemNet,
    build_memnet,
    load_memnet,
    memnet_loss,
    save_memnet,
    strip_classifier,
)


def test_strip_classifier_gives_features():
    resnet = strip_classifier(load_model("torchvision:resnet18", image_size=32).module)
    with torch.no_grad():
        assert resnet(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    timm_net = load_model("timm:test_resnet", image_size=32).module
    n_features = timm_net.num_features
    with torch.no_grad():
        assert strip_classifier(timm_net)(torch.zeros(2, 3, 32, 32)).shape == (2, n_features)


def test_joint_loss_matches_numpy():
    rng = np.random.default_rng(0)
    outputs = {"memorability": torch.tensor(rng.standard_normal(6)),
               "logits": torch.tensor(rng.standard_normal((6, 3)))}
    target = rng.standard_normal(6)
    labels = np.array([0, 2, -1, 1, 1, -1])
    got = memnet_loss(outputs, torch.tensor(target), torch.tensor(labels),
                      memorability_weight=0.7, category_weight=0.2)
    mse = np.mean((outputs["memorability"].numpy() - target) ** 2)
    logits = outputs["logits"].numpy()[labels >= 0]
    ce = -np.mean(special.log_softmax(logits, axis=1)[np.arange(len(logits)), labels[labels >= 0]])
    assert float(got) == pytest.approx(0.7 * mse + 0.2 * ce, rel=1e-10)
    only_mem = memnet_loss({"memorability": outputs["memorability"]}, torch.tensor(target),
                           torch.tensor(labels))
    assert float(only_mem) == pytest.approx(mse, rel=1e-10)


def test_memnet_checkpoint_roundtrip_and_errors(tmp_path):
    net, config = build_memnet("timm:test_resnet", "both", 3, image_size=32)
    with pytest.raises(InputError, match="at least 2 categories"):
        MemNet(torch.nn.Identity(), 4, "category", 1)
    save_memnet(tmp_path / "ckpt", net, config)
    loaded, loaded_config = load_memnet(tmp_path / "ckpt")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = net.eval()(images), loaded(images)
    torch.testing.assert_close(got["memorability"], want["memorability"])
    torch.testing.assert_close(got["logits"], want["logits"])
    assert loaded_config == config


def test_train_memnet_pipeline(tmp_path, ray_local):
    truth = write_lamem(tmp_path / "lamem", n_images=60, image_size=32)
    truth[["image_id", "category"]].to_csv(tmp_path / "categories.csv", index=False)
    out = tmp_path / "run"
    code = main(["train-memnet", "--lamem-root", str(tmp_path / "lamem"),
                 "--categories", str(tmp_path / "categories.csv"), "--backbone", "timm:test_resnet",
                 "--image-size", "32", "--task", "both", "--memorability-weight", "2",
                 "--category-weight", "0.5", "--split", "1", "--epochs", "2",
                 "--batch-size", "16", "--lr", "1e-3", "--workers", "2",
                 "--cpus-per-worker", "0.5", "--out", str(out)])
    assert code == 0
    net, config = load_memnet(out / "split_1")
    assert config["task"] == "both" and config["categories"] == ["object", "scene"]
    assert config["training"]["memorability_weight"] == 2 and config["epoch"] == 1
    assert config["training"]["n_train"] == (truth["split_1"] == "train").sum()
    initial, _ = build_memnet("timm:test_resnet", "both", 2, image_size=32)
    trained_weight = net.memorability_head.weight
    assert not torch.allclose(trained_weight, initial.memorability_head.weight)
    # the reported test rho is the Spearman correlation of this checkpoint's predictions
    rows = list_lamem(tmp_path / "lamem", split="test_1")
    pixels = np.stack([decode_image(read_bytes(s), size=32) for s in rows["source"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    with torch.no_grad():
        predicted = net((images - mean) / std)["memorability"].numpy()
    table = pd.read_parquet(out / "assess.parquet")
    assert table["split"].tolist() == ["test_1"] and table["n"].tolist() == [len(rows)]
    want = stats.spearmanr(predicted, rows["memorability"]).statistic
    assert table["rho"].iloc[0] == pytest.approx(want, abs=1e-6)
    summary = json.loads((out / "assess.json").read_text())
    assert summary[0]["assessor"] == "memnet:timm:test_resnet:both"
