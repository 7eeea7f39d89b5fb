"""End-to-end test of ``neuromem layers``: extraction on the image-map engine into feature tables
(bad images isolated), per-layer memorability read-out and brain similarity, network comparison,
figure, rerun rules, and errors reported in one line before Ray starts."""

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
from neuromem.data.lamem import list_lamem, split_indices
from neuromem.data.schema import rows_to_arrow
from neuromem.data.synthetic import write_lamem
from neuromem.networks import load_model
from neuromem.representations.cka import debiased_linear_cka
from neuromem.representations.features import read_layer
from neuromem.representations.layers import LayerExtractor, Pooling
from neuromem.representations.readout import memorability_readout, neural_predictivity
from neuromem.runtime.storage import read_bytes

INCLUDE = r"^(act1|layer[124]\.0\.act2|layer3\.0\.act3|fc)$"  # stem, each stage's output, fc
LAYERS = ["act1", "layer1.0.act2", "layer2.0.act2", "layer3.0.act3", "layer4.0.act2", "fc"]
SIZE = 32


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
    broken = rows["image_id"].iloc[:2].tolist()
    (root / "lamem" / "images" / broken[0]).write_bytes(b"not a jpeg")  # corrupt
    (root / "lamem" / "images" / broken[1]).unlink()  # missing
    with torch.random.fork_rng():
        torch.manual_seed(7)
        other = load_model("timm:test_resnet", seed=7).module.state_dict()
    save_file(other, str(root / "other.safetensors"))
    networks = ["timm:test_resnet", f"timm:test_resnet@{root / 'other.safetensors'}"]
    out = root / "out"
    argv = ["layers", "--table", f"file://{root / 'table'}", "--out", str(out), "--include",
            INCLUDE, "--image-size", str(SIZE), "--max-features", "256", "--batch-size", "16",
            "--targets", "rois", "--compare", "--figure-roi", "roi_LOC", "--no-progress"]
    for network in networks:
        argv += ["--network", network]
    assert main(argv) == 0
    good = rows[~rows["image_id"].isin(broken)].reset_index(drop=True)
    return {"root": root, "out": out, "rows": good, "networks": networks, "argv": argv,
            "broken": broken}


@pytest.fixture(scope="module")
def bare(scan):
    """Features of both networks for the readable images, extracted in a plain loop here."""
    pixels = np.stack([decode_image(read_bytes(s), size=SIZE) for s in scan["rows"]["source"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    features = []
    for spec in scan["networks"]:
        extractor = LayerExtractor(load_model(spec, image_size=SIZE),
                                   Pooling(grid=2, max_features=256), include=INCLUDE)
        features.append({name: f.numpy() for name, f in extractor(images).items()})
    return features


def test_layer_table_matches_bare_loop_and_peers(scan, bare):
    out, rows, networks = scan["out"], scan["rows"], scan["networks"]
    table = pd.read_parquet(out / "layers.parquet")
    assert table["model"].tolist() == [m for m in networks for _ in LAYERS]
    assert table["layer"].tolist() == LAYERS * 2
    np.testing.assert_allclose(table["depth_fraction"][:6], np.linspace(0, 1, 6))
    assert (table["n_features"] <= 256).all()
    folder = out / "features" / "timm_test_resnet"
    first = table[table["model"] == networks[0]].set_index("layer")
    splits = split_indices(rows["splits"].tolist())  # LaMem's splits of the readable images
    memorability = rows["memorability"].to_numpy()
    brain = pq.read_table(scan["root"] / "table", columns=["image_id", "roi_LOC"]).to_pandas()
    brain = brain.set_index("image_id").loc[rows["image_id"], ["roi_LOC"]].to_numpy(np.float64)
    for layer in ("act1", "layer3.0.act3", "fc"):
        ids, x_nf = read_layer(f"file://{folder}", layer, int(first.loc[layer, "n_features"]))
        assert sorted(ids) == sorted(rows["image_id"])  # the broken images have no features
        order = [ids.index(i) for i in rows["image_id"]]
        np.testing.assert_allclose(x_nf[order], bare[0][layer], rtol=1e-4, atol=1e-5)
        x = bare[0][layer].astype(np.float64)
        readout = memorability_readout(x, memorability, splits)
        assert first.loc[layer, "memorability_rho_mean"] == pytest.approx(readout.mean, abs=1e-6)
        assert first.loc[layer, "memorability_rho_std"] == pytest.approx(
            np.std(list(readout.rho_per_split.values()), ddof=1), abs=1e-6)
        assert first.loc[layer, "cka_LOC"] == pytest.approx(debiased_linear_cka(x, brain),
                                                            rel=1e-4, abs=1e-6)
        score = neural_predictivity(x, brain)
        assert first.loc[layer, "predictivity_LOC"] == pytest.approx(score.raw, abs=1e-5)
        assert first.loc[layer, "predictivity_sd_LOC"] == pytest.approx(score.error, abs=1e-5)
    # planted effects: objects are more memorable and drive "LOC"; "V1" is noise
    assert table["memorability_rho_mean"].max() > 0.3
    assert table["predictivity_LOC"].median() > 0.4
    assert table["predictivity_LOC"].median() > table["predictivity_V1"].median() + 0.2
    assert (out / "layers.png").stat().st_size > 10_000
    record = json.loads((out / "run.json").read_text())
    assert record["conventions"]["cka"] == "debiased"
    assert record["settings"]["seed"] == 0 and "ray" in record["versions"]


def test_bad_images_land_in_the_errors_table(scan):
    folders = sorted((scan["out"] / "features").iterdir())
    assert len(folders) == 2
    for folder in folders:
        errors = pq.read_table(folder / "_errors").to_pandas()
        assert sorted(errors["image_id"]) == sorted(scan["broken"])
        assert set(errors["stage"]) == {"decode"}


def test_compare_networks_layer_by_layer(scan, bare):
    compare = pd.read_parquet(scan["out"] / "compare.parquet")
    assert len(compare) == 6 and (compare["model_a"] == scan["networks"][0]).all()
    bare_a, bare_b = bare
    for _, row in compare.iterrows():
        want = debiased_linear_cka(bare_a[row["layer"]].astype(np.float64),
                                   bare_b[row["layer"]].astype(np.float64))
        assert row["cka"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert compare[["unique_a_LOC", "unique_b_LOC"]].abs().max().max() <= 1


def test_rerun_resumes_with_the_same_settings_and_refuses_others(scan, capsys):
    capsys.readouterr()
    assert main([a for a in scan["argv"] if a != "--no-progress"]) == 0
    printed, err = capsys.readouterr()
    assert "0 images extracted, 60 already done" in printed
    # bars over (layer, ROI) pairs, moved from inside the tasks: 12 layers × (2 ROIs + 1), with
    # rate and ETA
    bars = [line for line in err.replace("\r", "\n").splitlines() if "100%" in line]
    analysing = [b for b in bars if b.startswith("analysing 12 layers × 2 ROIs")]
    comparing = [b for b in bars if b.startswith("comparing 6 layers")]
    assert analysing and "36/36" in analysing[-1] and "12/12 layers" in analysing[-1], err
    assert comparing and "18/18" in comparing[-1], err
    assert all("ROI/s" in b or "s/ROI" in b for b in analysing + comparing)
    changed = [a if a != "256" else "128" for a in scan["argv"]]  # --max-features 128
    assert main(changed) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "max_features: 256 → 128" in error and "--overwrite" in error


def test_errors_are_one_line_before_any_work(tmp_path, capsys):
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "source": ["/a.jpg"], "roi_FFA": [1.0]}), table)
    (tmp_path / "file").write_text("in the way")
    base = ["layers", "--table", str(table), "--no-progress"]
    cases = [
        (["--network", "timm:no_such_net", "--out", str(tmp_path / "o1")], "timm has no model"),
        (["--network", "keras:resnet", "--out", str(tmp_path / "o2")], "LIBRARY:NAME"),
        (["--out", str(tmp_path / "o3")], "give at least one --network"),
        (["--network", "timm:test_resnet", "--roi", "PPA", "--out", str(tmp_path / "o4")],
         "no ROI column"),
        (["--network", "timm:test_resnet", "--out", str(tmp_path / "o5")],
         "only 1 images of the brain table"),
        (["--network", "timm:test_resnet", "--grid", "0", "--out", str(tmp_path / "o6")],
         "--grid must be at least 1"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 7))  # nothing written
    many = pa.table({"image_id": [str(i) for i in range(12)], "source": ["/x.jpg"] * 12,
                     "roi_FFA": np.arange(12.0)})
    pq.write_table(many, table)
    assert main(base + ["--network", "timm:test_resnet", "--out",
                        str(tmp_path / "file" / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot write" in error
