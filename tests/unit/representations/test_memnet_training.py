"""Training pieces of memorability networks: pixel table rows, batches, epochs, checkpoints by URI,
and the row models the image-map engine runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from scipy import special

from neuromem.data.batch import DecodedBatch, error_table
from neuromem.errors import InputError, MissingWeightsError
from neuromem.networks import load_model
from neuromem.representations.memnet import (
    MemNet,
    MemorabilityModel,
    build_memnet,
    check_checkpoint,
    load_memnet,
    memnet_loss,
    save_memnet,
    strip_classifier,
)
from neuromem.representations.memnet_training import (
    PixelModel,
    category_codes,
    category_names,
    train_epoch,
    training_batch,
)


def _decoded(pixels_bhw3, ids):
    return DecodedBatch(rows=pa.table({"image_id": ids, "source": ids}), pixels=pixels_bhw3,
                        is_clip=False, errors=error_table([], [], "decode", []))


def test_pixel_rows_become_training_batches_of_one_split():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    out = PixelModel(8)(_decoded(pixels, list("abcd")))
    batch = pa.table({"image_id": list("abcd"), "splits": ["train_1", "test_1,train_2", None,
                                                           "train_1,val_2"],
                      "memorability": [0.1, 0.2, 0.3, 0.4],
                      "category": ["scene", None, "object", "unknown"], "pixels": out["pixels"]})
    got = training_batch(batch, size=8, categories=["object", "scene"], split="train_1")
    np.testing.assert_array_equal(got["pixels"], pixels[[0, 3]])
    np.testing.assert_allclose(got["memorability"], [0.1, 0.4])
    assert got["category"].tolist() == [1, -1]  # unknown labels are -1
    assert category_codes(["scene", None], ["object", "scene"]).tolist() == [1, -1]
    assert category_names(pd.DataFrame({"category": ["b", None, "a", "b"]})) == ["a", "b"]


def test_train_epoch_reduces_the_joint_loss_and_refuses_nan():
    torch.manual_seed(0)
    net, config = build_memnet("timm:test_resnet", "both", 2, image_size=16)
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    batch = {"pixels": pixels, "memorability": torch.linspace(0, 1, 8),
             "category": torch.tensor([0, 1] * 4)}
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = [train_epoch(net, [batch], optimiser, mean=config["mean"], std=config["std"])
              for _ in range(5)]
    assert losses[-1] < losses[0]
    bad = {**batch, "memorability": torch.full((8,), float("nan"))}
    with pytest.raises(InputError, match="lower --lr"):
        train_epoch(net, [bad], optimiser, mean=config["mean"], std=config["std"])


def test_checkpoints_through_uris_and_the_memorability_row_model(tmp_path):
    net, config = build_memnet("timm:test_resnet", "both", 3, image_size=32, seed=2)
    folder = f"file://{tmp_path}/ckpt"
    save_memnet(folder, net, config)
    assert check_checkpoint(folder) == folder
    loaded, loaded_config = load_memnet(folder)
    assert loaded_config == config
    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    with torch.no_grad():
        want = net.eval()((images - mean) / std)["memorability"].numpy()
    rows = MemorabilityModel(folder)(_decoded(pixels, ["a", "b"]))
    np.testing.assert_allclose(rows.column("memorability").to_numpy(), want, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(MissingWeightsError, match="not a memnet checkpoint"):
        check_checkpoint(tmp_path / "nothing")
    categories_only, config = build_memnet("timm:test_resnet", "category", 2, image_size=32)
    save_memnet(tmp_path / "cat", categories_only, config)
    with pytest.raises(InputError, match="no memorability head"):
        MemorabilityModel(str(tmp_path / "cat"))


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
    with pytest.raises(InputError, match="at least 2 categories"):
        MemNet(torch.nn.Identity(), 4, "category", 1)
