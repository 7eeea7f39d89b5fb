"""End-to-end test of ``neuromem layers`` (pipelines/layer_scan.py): Ray Data extraction to
Parquet, per-layer memorability read-out and brain similarity, model comparison, figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from neuromem.cli import main
from neuromem.data.decode import decode_image
from neuromem.data.lamem import list_lamem
from neuromem.data.readers import read_bytes
from neuromem.data.schema import rows_to_arrow
from neuromem.data.synthetic import write_lamem
from neuromem.networks import load_model
from neuromem.representations.layers import LayerExtractor, Pooling
from neuromem.representations.readout import memorability_readout, neural_predictivity
from pipelines.layer_scan import arrow_to_features, features_to_arrow, read_layer, readout_splits

INCLUDE = r"^(act1|layer[124]\.0\.act2|layer3\.0\.act3|fc)$"  # stem, each stage's output, fc
SIZE = 32


def kornblith_cka(x, y):
    """Linear CKA as written in Kornblith et al. 2019 (centred HSIC ratio)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.fixture(scope="module")
def scan(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("scan")
    truth = write_lamem(root / "lamem", n_images=60, image_size=SIZE).set_index("image_id")
    rows = list_lamem(root / "lamem")
    table = rows_to_arrow(rows)
    rng = np.random.default_rng(0)
    is_object = (truth.loc[rows["image_id"], "category"] == "object").to_numpy(float)
    table = table.append_column("roi_LOC", pa.array(
        (is_object + 0.3 * rng.standard_normal(len(rows))).astype(np.float32)))
    table = table.append_column("roi_V1", pa.array(rng.standard_normal(len(rows)).astype(np.float32)))
    (root / "table").mkdir()
    pq.write_table(table, root / "table" / "part-0.parquet")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        other = load_model("timm:test_resnet", seed=7).module.state_dict()
    save_file(other, str(root / "other.safetensors"))
    models = ["timm:test_resnet", f"timm:test_resnet@{root / 'other.safetensors'}"]
    out = root / "out"
    argv = ["layers", "--table", str(root / "table"), "--out", str(out), "--include", INCLUDE,
            "--image-size", str(SIZE), "--max-features", "256", "--batch-size", "16",
            "--targets", "rois", "--compare", "--figure-roi", "LOC"]
    for model in models:
        argv += ["--model", model]
    assert main(argv) == 0
    return root, out, rows, models


@pytest.fixture(scope="module")
def bare(scan):
    """Features of both models extracted in a plain loop, in this process."""
    _, _, rows, models = scan
    return [bare_features(model, rows) for model in models]


def bare_features(spec, rows):
    """The same layers extracted in a plain loop, in this process."""
    model = load_model(spec, image_size=SIZE)
    extractor = LayerExtractor(model, Pooling(grid=2, max_features=256), include=INCLUDE)
    pixels = np.stack([decode_image(read_bytes(s), size=SIZE) for s in rows["source"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return {name: f.numpy() for name, f in extractor(images).items()}


def test_layer_table_matches_bare_loop_and_peers(scan, bare):
    root, out, rows, models = scan
    table = pd.read_parquet(out / "layers.parquet")
    layers = ["act1", "layer1.0.act2", "layer2.0.act2", "layer3.0.act3", "layer4.0.act2", "fc"]
    assert table["model"].tolist() == [m for m in models for _ in layers]
    assert table["layer"].tolist() == layers * 2
    np.testing.assert_allclose(table["depth_fraction"][:6], np.linspace(0, 1, 6))
    assert (table["n_features"] <= 256).all()
    folder = out / "features" / "timm_test_resnet"
    manifest = json.loads((folder / "layers.json").read_text())
    assert [layer["name"] for layer in manifest["layers"]] == layers
    bare = bare[0]
    first = table[table["model"] == models[0]].set_index("layer")
    splits = readout_splits(rows, 0)
    assert list(splits) == [f"test_{k}" for k in range(1, 6)]
    memorability = rows["memorability"].to_numpy()
    brain = pq.read_table(root / "table", columns=["roi_LOC"]).column(0).to_numpy()
    brain = brain.astype(np.float64)[:, None]
    for layer in ("act1", "layer3.0.act3", "fc"):
        ids, x_nf = read_layer(str(folder), layer, int(first.loc[layer, "n_features"]))
        order = [ids.index(i) for i in rows["image_id"]]
        np.testing.assert_allclose(x_nf[order], bare[layer], rtol=1e-4, atol=1e-5)
        x = bare[layer].astype(np.float64)
        readout = memorability_readout(x, memorability, splits)
        assert first.loc[layer, "memorability_rho_mean"] == pytest.approx(readout.mean, abs=1e-6)
        assert first.loc[layer, "memorability_rho_std"] == pytest.approx(
            np.std(list(readout.rho_per_split.values()), ddof=1), abs=1e-6)
        assert first.loc[layer, "cka_LOC"] == pytest.approx(kornblith_cka(x, brain), rel=1e-4)
        assert first.loc[layer, "predictivity_LOC"] == pytest.approx(
            neural_predictivity(x, brain).raw, abs=1e-5)
    # planted effects: objects are more memorable and drive "LOC"; "V1" is noise
    assert table["memorability_rho_mean"].max() > 0.3
    assert table["predictivity_LOC"].median() > 0.4
    assert table["predictivity_LOC"].median() > table["predictivity_V1"].median() + 0.2
    assert (out / "layers.png").stat().st_size > 10_000


def test_compare_models_layer_by_layer(scan, bare):
    root, out, rows, models = scan
    compare = pd.read_parquet(out / "compare.parquet")
    assert len(compare) == 6 and (compare["model_a"] == models[0]).all()
    bare_a, bare_b = bare
    for _, row in compare.iterrows():
        want = kornblith_cka(bare_a[row["layer"]].astype(np.float64),
                             bare_b[row["layer"]].astype(np.float64))
        assert row["cka"] == pytest.approx(want, rel=1e-4)
    assert compare[["unique_a_LOC", "unique_b_LOC"]].abs().max().max() <= 1


def test_feature_column_roundtrip():
    values = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    column = pa.chunked_array([features_to_arrow(values[:2]), features_to_arrow(values[2:])])
    assert column.type == pa.binary(28)
    np.testing.assert_array_equal(arrow_to_features(column, 7), values)
    np.testing.assert_array_equal(arrow_to_features(column.combine_chunks().slice(1, 3), 7), values[1:4])


def test_vertex_targets_average_repeats_and_stay_in_roi(tmp_path):
    from neuromem.cortex.rois import load_roi_set
    from neuromem.scoring.table import vertices_to_arrow
    from pipelines.layer_scan import read_brain_targets

    rng = np.random.default_rng(0)
    responses_bv = rng.standard_normal((6, 20484)).astype(np.float16)
    ids = ["a", "b", "c", "a", "b", "c"]  # every image twice (two subjects)
    table = pa.table({"image_id": ids, "vertices": vertices_to_arrow(responses_bv)})
    pq.write_table(table, tmp_path / "brain.parquet")
    targets = read_brain_targets(str(tmp_path / "brain.parquet"), rois=["LOC", "FFA"],
                                 max_vertices=20)
    assert targets.image_ids == ["a", "b", "c"]
    mean_3v = (responses_bv[:3].astype(np.float64) + responses_bv[3:]) / 2
    roi_set = load_roi_set("default")
    for roi in ("LOC", "FFA"):
        y_nt = targets.targets[roi]
        assert y_nt.shape == (3, min(20, roi_set.indices[roi].size))
        inside = mean_3v[:, roi_set.indices[roi]]
        matches = [np.flatnonzero(np.all(np.isclose(inside, column[:, None]), axis=0))
                   for column in y_nt.T]
        assert all(len(m) == 1 for m in matches)  # each target is one vertex of the ROI
        assert len({int(m[0]) for m in matches}) == y_nt.shape[1]  # all distinct


def test_lamem_splits_follow_split_files(tmp_path):
    from neuromem.representations.readout import lamem_splits

    truth = write_lamem(tmp_path, n_images=30, image_size=16).set_index("image_id")
    rows = list_lamem(tmp_path)
    splits = lamem_splits(rows["splits"].tolist())
    assert list(splits) == [f"test_{k}" for k in range(1, 6)]
    for k in range(1, 6):
        train, test = splits[f"test_{k}"]
        membership = truth.loc[rows["image_id"], f"split_{k}"].to_numpy()
        np.testing.assert_array_equal(train, np.flatnonzero(membership == "train"))
        np.testing.assert_array_equal(test, np.flatnonzero(membership == "test"))


def test_cross_validated_predictions_match_sklearn():
    from sklearn.cross_decomposition import PLSRegression

    from neuromem.representations.readout import cross_validated_predictions

    rng = np.random.default_rng(1)
    x_nf = rng.standard_normal((40, 12))
    # one target: sklearn's NIPALS is then exact (for several it stops its power iteration early)
    y_nt = x_nf[:, :3] @ rng.standard_normal((3, 1)) + 0.5 * rng.standard_normal((40, 1))
    got = cross_validated_predictions(x_nf, y_nt, n_components=4, n_folds=5, seed=3)
    want = np.empty_like(y_nt)
    for fold in np.array_split(np.random.default_rng(3).permutation(40), 5):
        train = np.setdiff1d(np.arange(40), fold)
        pls = PLSRegression(n_components=4, scale=False).fit(x_nf[train], y_nt[train])
        want[fold] = pls.predict(x_nf[fold])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
