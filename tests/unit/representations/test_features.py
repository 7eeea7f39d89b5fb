"""Layer-feature tables: the engine's layer model, parts through the storage layer, read back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from neuromem.data.batch import DecodedBatch, error_table
from neuromem.networks import load_model
from neuromem.representations.features import (
    LayerFeatureModel,
    discover,
    feature_ids,
    network_slug,
    read_layer,
    read_manifest,
    write_manifest,
)
from neuromem.representations.layers import LayerExtractor, Pooling
from neuromem.runtime.storage import PartWriter

INCLUDE = r"^(act1|layer2\.0\.act2|fc)$"


def test_layer_features_roundtrip_through_parts(tmp_path):
    pooling = Pooling(grid=2, max_features=40, seed=1)
    layers = discover("timm:test_resnet", image_size=32, pooling=pooling, include=INCLUDE)
    assert [layer["name"] for layer in layers] == ["act1", "layer2.0.act2", "fc"]
    np.testing.assert_allclose([layer["depth_fraction"] for layer in layers], [0, 0.5, 1])
    model = LayerFeatureModel("timm:test_resnet", 32, 2, 40, 1, layers)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    decoded = DecodedBatch(rows=pa.table({"image_id": ["a", "b", "c"]}), pixels=pixels,
                           is_clip=False, errors=error_table([], [], "decode", []))
    out = model(decoded)
    assert out.schema == model.schema
    folder = f"file://{tmp_path}/features/{network_slug('timm:test_resnet@/w/x.pt')}"
    writer = PartWriter(folder)
    writer.write(pa.table({"image_id": ["a", "b", "c"], **{n: out[n] for n in out.column_names}}))
    write_manifest(folder, {"network": "timm:test_resnet"}, layers)
    assert read_manifest(folder) == layers
    assert feature_ids(folder) == ["a", "b", "c"]
    bare = LayerExtractor(load_model("timm:test_resnet", image_size=32, seed=1), pooling,
                          include=INCLUDE)
    want = bare(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    for layer in layers:
        ids, x_nf = read_layer(folder, layer["name"], layer["n_features"])
        assert ids == ["a", "b", "c"] and x_nf.shape[1] == layer["n_features"] <= 40
        np.testing.assert_allclose(x_nf, want[layer["name"]].numpy(), rtol=1e-5, atol=1e-6)
    assert "timm_test_resnet_w_x.pt" in folder
