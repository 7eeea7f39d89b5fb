"""The composite brain reward: weights, standardisation, value and gradient."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.errors import InputError, UnknownNameError
from neuromem.generation.reward import (
    SEED000_WEIGHTS,
    CompositeReward,
    RewardSpec,
    build_composite_reward,
    load_reward_spec,
    roi_stats_from_table,
)
from neuromem.scoring.table import build_metadata, write_metadata


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads stall on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_results(path, prefix="roi_", partial_ppa=-0.2):
    rows = [
        {"roi": f"{prefix}LOC", "n": 100, "pearson_r": 0.05, "partial_r": 0.04},
        {"roi": f"{prefix}FFA", "n": 100, "pearson_r": 0.23, "partial_r": 0.2},
        {"roi": f"{prefix}RSC", "n": 100, "pearson_r": -0.49, "partial_r": -0.3},
        {"roi": f"{prefix}PPA", "n": 100, "pearson_r": -0.37, "partial_r": partial_ppa},
        {"roi": f"{prefix}V1", "n": 100, "pearson_r": 0.06, "partial_r": 0.05},
    ]
    path.write_text(json.dumps({"n_images": 100, "memorability_column": "memorability",
                                "category_column": "category", "seed": 0, "rois": rows,
                                "agreement": []}))
    return path


@pytest.mark.parametrize("prefix", ["roi_", ""])
def test_weights_from_results(tmp_path, prefix):
    path = write_results(tmp_path / "results.json", prefix)
    plain = load_reward_spec(path)
    assert plain.weights == {"LOC": 0.05, "FFA": 0.23, "RSC": -0.49, "PPA": -0.37}
    assert plain.correlation == "pearson" and plain.source == str(path)
    partial = load_reward_spec(path, correlation="partial", rois=["FFA", "V1"])
    assert partial.weights == {"FFA": 0.2, "V1": 0.05}
    record = partial.to_dict()
    assert RewardSpec.from_dict(json.loads(json.dumps(record))) == partial
    assert record["mean"] == {"FFA": 0.0, "V1": 0.0} and record["std"] == {"FFA": 1.0, "V1": 1.0}


def test_bad_weight_sources_raise(tmp_path):
    path = write_results(tmp_path / "results.json", partial_ppa=None)
    with pytest.raises(InputError, match="partial_r"):
        load_reward_spec(path, correlation="partial")
    with pytest.raises(UnknownNameError, match="STS"):
        load_reward_spec(path, rois=["STS"])
    with pytest.raises(UnknownNameError, match="spearman"):
        load_reward_spec(path, correlation="spearman")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="rois"):
        load_reward_spec(tmp_path / "bad.json")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(InputError, match="yaml"):
        load_reward_spec(tmp_path / "w.txt")


def test_defaults_and_yaml(tmp_path):
    spec = load_reward_spec()
    assert spec.weights == SEED000_WEIGHTS and spec.source == "seed000"
    (tmp_path / "w.yaml").write_text("weights: {roi_FFA: 1.5, PPA: -2}\n")
    assert load_reward_spec(tmp_path / "w.yaml").weights == {"FFA": 1.5, "PPA": -2.0}
    (tmp_path / "bad.yaml").write_text("FFA: 1\n")
    with pytest.raises(InputError, match="weights:"):
        load_reward_spec(tmp_path / "bad.yaml")


def test_stats_from_score_table(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "scores"
    folder.mkdir()
    frames = [pd.DataFrame({"image_id": [f"{k}_{i}" for i in range(50)],
                            "roi_FFA": rng.normal(2, 3, 50).astype("float32"),
                            "roi_PPA": rng.normal(-1, 0.5, 50).astype("float32")})
              for k in range(2)]
    for k, frame in enumerate(frames):
        frame.to_parquet(folder / f"part-{k}.parquet")
    table = pd.concat(frames)
    mean, std = roi_stats_from_table(str(folder), ["FFA", "PPA"])
    for roi in ("FFA", "PPA"):
        assert mean[roi] == pytest.approx(table[f"roi_{roi}"].astype(float).mean(), rel=1e-12)
        assert std[roi] == pytest.approx(table[f"roi_{roi}"].astype(float).std(), rel=1e-12)
    (tmp_path / "w.yaml").write_text("weights: {FFA: 1.0, PPA: -1.0}\n")
    spec = load_reward_spec(tmp_path / "w.yaml", score_table=str(folder))
    assert spec.mean == mean and spec.std == std and spec.stats_source == str(folder)
    with pytest.raises(UnknownNameError, match="roi_LOC"):
        load_reward_spec(None, score_table=str(folder))  # the default ROIs include LOC


def write_scored_table(folder, *, encoder: str, roi_set: str) -> None:
    """A two-part table with the metadata ``neuromem score`` writes (encoder, ROI fingerprint)."""
    rois = load_roi_set(roi_set)
    settings = {"encoder": encoder, "rois": rois.to_dict()["indices_sha256"],
                "rois_name": rois.name}
    metadata = build_metadata(encoder={"spec": encoder}, atlas=rois.atlas, rois=rois.to_dict(),
                              settings=settings)
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(2):
        table = pa.table({"image_id": [f"{k}_{i}" for i in range(20)],
                          **{c: rng.normal(size=20).astype("float32") for c in rois.column_names}})
        pq.write_table(write_metadata(table, metadata), folder / f"part-{k}.parquet")


def test_score_table_must_come_from_the_rewards_encoder_and_rois(tmp_path):
    (tmp_path / "w.yaml").write_text("weights: {FFA: 1.0, PPA: -1.0}\n")
    (tmp_path / "mine.yaml").write_text(
        "name: mine\natlas: glasser\nrois:\n  FFA: [FFC]\n  PPA: [PHA1]\n")
    write_scored_table(tmp_path / "tiny", encoder="clip-probe:tiny", roi_set="default")
    write_scored_table(tmp_path / "mine", encoder="clip-probe:tiny",
                       roi_set=str(tmp_path / "mine.yaml"))
    good = load_reward_spec(tmp_path / "w.yaml", score_table=str(tmp_path / "tiny"),
                            encoder="clip-probe:tiny", roi_set="default")
    assert good.stats_source == str(tmp_path / "tiny")
    with pytest.raises(InputError, match=r"encoder 'clip-probe:tiny'.*uses 'tribev2:tiny'"):
        load_reward_spec(tmp_path / "w.yaml", score_table=str(tmp_path / "tiny"),
                         encoder="tribev2:tiny", roi_set="default")
    with pytest.raises(InputError, match=r"ROI set 'mine'.*ROI set 'default'"):
        load_reward_spec(tmp_path / "w.yaml", score_table=str(tmp_path / "mine"),
                         encoder="clip-probe:tiny", roi_set="default")
    bare = tmp_path / "bare"
    bare.mkdir()
    pd.DataFrame({"roi_FFA": [1.0, 2.0], "roi_PPA": [0.0, 1.0]}).to_parquet(bare / "p.parquet")
    with pytest.raises(InputError, match="records no settings"):
        load_reward_spec(tmp_path / "w.yaml", score_table=str(bare), encoder="clip-probe:tiny")


class LinearEncoder(torch.nn.Module):
    """Vertex responses linear in the pixels: a fixed random projection (float64)."""

    def __init__(self, n_pixels: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(
            torch.randn(n_pixels, 20484, generator=generator, dtype=torch.float64) / 10
        )

    def forward(self, images_b3hw, trunc_layer=None):
        return images_b3hw.flatten(1) @ self.weight


def test_composite_reward_value_and_gradient():
    reducer = RoiReducer(load_roi_set("default"))
    spec = RewardSpec(weights={"FFA": 0.23, "RSC": -0.49},
                      mean={"FFA": 0.1, "RSC": -0.2}, std={"FFA": 2.0, "RSC": 0.5})
    encoder = LinearEncoder(3 * 4 * 4)
    reward = CompositeReward(encoder, reducer, spec)
    images = torch.rand(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    value = reward(images)
    # independent value: the float32 numpy ROI means, standardised with pandas
    responses = (images.detach().flatten(1) @ encoder.weight.detach()).numpy()
    rois = pd.DataFrame(reducer(responses), columns=reducer.column_names)
    expected = (0.23 * (rois["roi_FFA"] - 0.1) / 2.0 - 0.49 * (rois["roi_RSC"] + 0.2) / 0.5)
    np.testing.assert_allclose(value.detach().numpy(), expected.to_numpy(), rtol=1e-6)
    assert torch.autograd.gradcheck(lambda x: reward(x), (images,))


def test_composite_reward_on_the_tiny_probe_is_differentiable(tmp_path):
    spec = load_reward_spec()
    reward = build_composite_reward("clip-probe:tiny", spec)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = reward(images)
    assert value.shape == (2,)
    value.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())
    with pytest.raises(UnknownNameError, match="XYZ"):
        CompositeReward(reward.encoder, reward.reducer, RewardSpec(weights={"XYZ": 1.0}))


def test_composite_reward_passes_the_surrogate_layer_and_refuses_a_probe_truncation():
    spec = load_reward_spec()
    full = build_composite_reward("clip-probe:tiny", spec)
    surrogate = build_composite_reward("clip-probe:tiny", spec, surrogate_layer=2)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def value_and_grad(reward):
        pixels = images.clone().requires_grad_(True)
        value = reward(pixels)
        value.sum().backward()
        return value.detach(), pixels.grad

    value_full, grad_full = value_and_grad(full)
    value_surrogate, grad_surrogate = value_and_grad(surrogate)
    torch.testing.assert_close(value_surrogate, value_full)  # the value is the full probe's
    pixels = images.clone().requires_grad_(True)  # the gradient is the encoder's surrogate one
    surrogate.from_roi_responses(surrogate.reducer(
        surrogate.encoder(pixels, surrogate_layer=2))).sum().backward()
    torch.testing.assert_close(grad_surrogate, pixels.grad)
    assert not torch.allclose(grad_surrogate, grad_full, rtol=1e-2)
    with pytest.raises(InputError, match="no gradient path"):
        build_composite_reward("clip-probe:tiny", spec, trunc_layer=2)(images)
    with pytest.raises(InputError, match="not both"):
        CompositeReward(full.encoder, full.reducer, spec, trunc_layer=4, surrogate_layer=2)

