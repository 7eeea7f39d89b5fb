"""End-to-end test of ``neuromem decode`` at tiny size.

Synthetic brain signals are a fixed random linear map of one image network's embeddings plus
noise, for two subjects. Retrieval among 200 held-out images must be far above chance with the
true pairing, at chance with shuffled pairs, and better with the network that generated the
signals than with an unrelated one. A corrupt and a missing image are left out and listed in
the errors table; non-finite embeddings stop the job with one line.
"""

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
from neuromem.data.synthetic import write_lamem
from neuromem.networks import load_model
from neuromem.representations.memnet import strip_classifier
from neuromem.runtime.storage import read_bytes

N_IMAGES = 320
N_TEST = 200
ALIGNED = "open_clip:tiny"
OTHER = "timm:test_resnet"


def embed(spec, sources):
    """Embeddings of the images by the network without its classifier, in a plain loop."""
    model = load_model(spec)
    net = strip_classifier(model.module)
    pixels = np.stack([decode_image(read_bytes(s), size=model.image_size) for s in sources])
    with torch.no_grad():
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        return net(model.preprocess(images)).flatten(1).numpy()


@pytest.fixture(scope="module")
def brain_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    write_lamem(root / "lamem", n_images=N_IMAGES, image_size=32)
    rows = list_lamem(root / "lamem")
    images = root / "images.parquet"
    pq.write_table(pa.Table.from_pandas(rows[["image_id", "source"]], preserve_index=False), images)
    embeddings_nd = embed(ALIGNED, rows["source"].tolist())
    rng = np.random.default_rng(0)
    mixing_dc = rng.standard_normal((embeddings_nd.shape[1], 96))
    signals, ids, subjects = [], [], []
    for subject in ("s1", "s2"):
        clean_nc = (embeddings_nd - embeddings_nd.mean(0)) / embeddings_nd.std(0) @ mixing_dc
        signals.append(clean_nc + 0.5 * clean_nc.std() * rng.standard_normal(clean_nc.shape))
        ids.append(rows["image_id"].to_numpy(str))
        subjects.append(np.full(len(rows), subject))
    npz = root / "eeg.npz"
    # channel x time layout, as EEG would be
    np.savez(npz, signals=np.concatenate(signals).reshape(-1, 8, 12).astype(np.float32),
             image_id=np.concatenate(ids), subject=np.concatenate(subjects))
    broken = rows["image_id"].iloc[:2].tolist()
    (root / "lamem" / "images" / broken[0]).write_bytes(b"not a jpeg")
    (root / "lamem" / "images" / broken[1]).unlink()
    return root, npz, images, broken


def test_decode_retrieval_above_chance_and_controls(brain_data, ray_local):
    root, npz, images, broken = brain_data
    out = root / "out"
    code = main([
        "decode", "--signals", f"file://{npz}", "--images", f"file://{images}",
        "--network", ALIGNED, "--network", OTHER, "--gpus-per-worker", "0",
        "--n-test", str(N_TEST), "--epochs", "60", "--batch-size", "60", "--hidden", "256",
        "--dropout", "0.1", "--shuffled-control", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    table = pd.read_parquet(out / "retrieval.parquet").set_index(["image_encoder", "subject", "pairing"])
    assert set(table.index.get_level_values("subject")) == {"s1", "s2", "mean"}
    n_train = N_IMAGES - len(broken) - N_TEST
    assert (table["n_test"] == N_TEST).all() and (table["n_train"] == n_train).all()
    assert table["chance_top1"].iloc[0] == pytest.approx(0.005)
    assert table["chance_top5"].iloc[0] == pytest.approx(0.025)
    for subject in ("s1", "s2"):
        true = table.loc[(ALIGNED, subject, "true")]
        assert true["top1"] > 0.05 and true["top5"] > 0.25  # 10x chance
        shuffled = table.loc[(ALIGNED, subject, "shuffled")]
        assert shuffled["top5"] < 0.08  # chance 0.025; 0.08 is > 4 binomial SDs above it
    mean = table.loc[(ALIGNED, "mean", "true")]
    expected = table.loc[[(ALIGNED, "s1", "true"), (ALIGNED, "s2", "true")], "top1"].mean()
    assert mean["top1"] == pytest.approx(expected)
    # the network whose embeddings generated the signals decodes better than an unrelated one
    assert mean["top5"] > table.loc[(OTHER, "mean", "true")]["top5"]
    states = torch.load(out / "encoders.pt")
    assert len(states) == 8 and f"{ALIGNED}/s1/true" in states
    errors = pq.read_table(out / "_errors").to_pandas()
    assert sorted(errors["image_id"]) == sorted(broken)
    record = json.loads((out / "run.json").read_text())
    assert len(record["test_ids"]) == N_TEST and not set(record["test_ids"]) & set(broken)


def test_non_finite_embeddings_stop_decode(brain_data, ray_local, tmp_path, capsys):
    root, npz, images, _ = brain_data
    state = load_model(OTHER).module.state_dict()
    save_file({k: torch.full_like(v, torch.nan) if v.is_floating_point() else v
               for k, v in state.items()}, str(tmp_path / "nan.safetensors"))
    ids = np.load(npz)["image_id"][2:22]  # 20 readable images
    np.savez(tmp_path / "few.npz", signals=np.zeros((20, 4), np.float32), image_id=ids)
    code = main(["decode", "--signals", str(tmp_path / "few.npz"), "--images", str(images),
                 "--network", f"{OTHER}@{tmp_path / 'nan.safetensors'}", "--n-test", "5",
                 "--gpus-per-worker", "0", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "non-finite embeddings for 20 of 20" in error


def test_decode_input_errors_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", signals=np.zeros((4, 2), np.float32),
             image_id=np.array(list("abcd")))
    base = ["decode", "--signals", str(tmp_path / "s.npz"), "--no-progress",
            "--out", str(tmp_path / "out")]
    cases = [
        (["--network", OTHER], "--signals needs --images"),
        (["--images", str(tmp_path / "s.npz"), "--network", OTHER, "--n-test", "4"],
         "leaves no training images"),
        (["--images", str(tmp_path / "s.npz"), "--network", "open_clip:ViT-B-32@opnai"],
         "pretrained tag"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "out").exists()
