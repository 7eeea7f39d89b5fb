"""Layer discovery, hooks and pooling (neuromem.representations.layers) on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromem.errors import InputError
from neuromem.networks import load_model
from neuromem.representations.cka import linear_cka
from neuromem.representations.layers import (
    OUTPUT_LAYER,
    LayerExtractor,
    Pooling,
    depth_fractions,
    sparse_projection,
)


def test_spatial_and_token_pooling_match_block_means():
    pooling = Pooling(grid=2, max_features=10_000)
    x = torch.randn(3, 5, 6, 8)
    got = pooling("conv", x).numpy().reshape(3, 5, 2, 2)
    want = x.numpy().reshape(3, 5, 2, 3, 2, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert pooling.n_features((5, 6, 8)) == 20
    tokens = torch.randn(2, 12, 7)  # (B, T, D): 4 bins of 3 consecutive tokens
    got = pooling("tokens", tokens).numpy().reshape(2, 7, 4)
    want = tokens.numpy().reshape(2, 4, 3, 7).mean(axis=2).transpose(0, 2, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert pooling.n_features((12, 7)) == 28
    vector = torch.randn(4, 9)
    assert torch.equal(pooling("fc", vector), vector)


def test_sparse_projection_is_seeded_and_preserves_geometry():
    a = sparse_projection(4096, 512, seed=(0, 1)).to_dense()
    b = sparse_projection(4096, 512, seed=(0, 1)).to_dense()
    assert torch.equal(a, b)
    assert not torch.equal(a, sparse_projection(4096, 512, seed=(0, 2)).to_dense())
    density = float((a != 0).float().mean())
    assert density == pytest.approx(1 / 64, rel=0.05)  # 1/sqrt(4096)
    rng = np.random.default_rng(0)
    # low-rank activations, as layer outputs are: 200 images, 20 latent dimensions
    x_nf = (rng.standard_normal((200, 20)) @ rng.standard_normal((20, 4096))).astype(np.float32)
    pooling = Pooling(grid=1, max_features=512)
    projected = pooling("layer", torch.from_numpy(x_nf)).numpy()
    assert projected.shape == (200, 512)
    ratio = np.linalg.norm(projected, axis=1) ** 2 / np.linalg.norm(x_nf, axis=1) ** 2
    assert abs(ratio.mean() - 1) < 0.1
    assert linear_cka(x_nf, projected) > 0.9


def test_torchvision_resnet18_layers_and_hooks():
    model = load_model("torchvision:resnet18", image_size=32)
    extractor = LayerExtractor(model, Pooling(grid=2, max_features=300))
    names = [layer.name for layer in extractor.layers]
    # 20 convs, 20 batch norms, 17 ReLU calls (stem + 2 per block x 8), maxpool, avgpool, fc
    assert len(names) == 60
    assert "layer1.0.relu#1" in names and "layer4.1.relu#1" in names
    assert names[0] == "conv1" and names[-1] == "fc"
    assert OUTPUT_LAYER not in names  # the model's output is fc's
    np.testing.assert_allclose(depth_fractions(len(names))[[0, -1]], [0, 1])
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    features = extractor(images)
    assert [f.shape[1] for f in features.values()] == [layer.n_features for layer in extractor.layers]
    x = model.preprocess(images)
    with torch.no_grad():
        logits = model.module(x)
        conv1 = model.module.conv1(x)
    # fc has 1000 outputs > 300: projected with the layer's seeded sparse matrix
    projection = extractor.pooling.projection("fc", 1000, torch.device("cpu")).to_dense()
    np.testing.assert_allclose(features["fc"], logits @ projection.T, rtol=1e-4, atol=1e-4)
    pooled = torch.nn.functional.adaptive_avg_pool2d(conv1, 2).flatten(1)
    np.testing.assert_allclose(features["conv1"], pooled, rtol=1e-4, atol=1e-5)
    # an image's features do not depend on the rest of its batch
    alone = extractor(images[1:2])
    for name in ("layer2.1.relu#1", "fc"):
        np.testing.assert_allclose(alone[name][0], features[name][1], rtol=1e-4, atol=1e-4)


def test_open_clip_tower_output_is_the_last_layer():
    model = load_model("open_clip:tiny")
    extractor = LayerExtractor(model, Pooling(grid=2, max_features=4096))
    assert extractor.layers[-1].name == OUTPUT_LAYER
    token_layers = [layer for layer in extractor.layers if len(layer.shape) == 2]
    assert token_layers and all(layer.n_features == 4 * layer.shape[1] for layer in token_layers)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    features = extractor(images)
    with torch.no_grad():
        embedding = model.module(model.preprocess(images))
    np.testing.assert_allclose(features[OUTPUT_LAYER], embedding, rtol=1e-5, atol=1e-6)


def test_timm_include_filter_and_errors():
    model = load_model("timm:test_vit")
    extractor = LayerExtractor(model, Pooling(), include=r"^blocks\.\d+\.mlp\.fc2$")
    assert [layer.name for layer in extractor.layers] == [
        f"blocks.{i}.mlp.fc2" for i in range(len(model.module.blocks))
    ]
    assert [layer.index for layer in extractor.layers] == list(range(len(extractor.layers)))
    with pytest.raises(InputError, match="no layer matches"):
        LayerExtractor(model, Pooling(), include="nothing-like-this")
    with pytest.raises(InputError, match="grid"):
        Pooling(grid=0)
