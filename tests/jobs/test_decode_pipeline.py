"""End-to-end test of ``neuromem decode`` (pipelines/decode.py) at tiny size.

Synthetic brain signals are a fixed random linear map of one image encoder's embeddings plus
noise, for two subjects. Retrieval among 200 held-out images must be far above chance with the
true pairing, at chance with shuffled pairs, and better with the encoder that generated the
signals than with an unrelated one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.cli import main
from neuromem.data.lamem import list_lamem
from neuromem.data.synthetic import write_lamem
from pipelines.decode import embed_images

N_IMAGES = 320
N_TEST = 200
ALIGNED = "open_clip:tiny"
OTHER = "timm:test_resnet"


@pytest.fixture(scope="module")
def brain_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    write_lamem(root / "lamem", n_images=N_IMAGES, image_size=32)
    rows = list_lamem(root / "lamem")
    images = root / "images.parquet"
    pq.write_table(pa.Table.from_pandas(rows[["image_id", "source"]], preserve_index=False), images)
    embeddings_nd = embed_images(ALIGNED, rows["source"].tolist())
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
    return root, npz, images


def test_decode_retrieval_above_chance_and_controls(brain_data, ray_local):
    root, npz, images = brain_data
    out = root / "out"
    code = main([
        "decode", "--signals", str(npz), "--images", str(images),
        "--image-encoder", ALIGNED, "--image-encoder", OTHER,
        "--n-test", str(N_TEST), "--epochs", "60", "--batch-size", "60", "--hidden", "256",
        "--dropout", "0.1", "--shuffled-control", "--out", str(out),
    ])
    assert code == 0
    table = pd.read_parquet(out / "retrieval.parquet").set_index(["image_encoder", "subject", "pairing"])
    assert set(table.index.get_level_values("subject")) == {"s1", "s2", "mean"}
    assert (table["n_test"] == N_TEST).all() and (table["n_train"] == N_IMAGES - N_TEST).all()
    assert table["chance_top1"].iloc[0] == pytest.approx(0.005)
    assert table["chance_top5"].iloc[0] == pytest.approx(0.025)
    for subject in ("s1", "s2"):
        true = table.loc[(ALIGNED, subject, "true")]
        assert true["top1"] > 0.1 and true["top5"] > 0.3  # 20x and 12x chance
        shuffled = table.loc[(ALIGNED, subject, "shuffled")]
        assert shuffled["top5"] < 0.08  # chance 0.025; 0.08 is > 4 binomial SDs above it
    mean = table.loc[(ALIGNED, "mean", "true")]
    expected = table.loc[[(ALIGNED, "s1", "true"), (ALIGNED, "s2", "true")], "top1"].mean()
    assert mean["top1"] == pytest.approx(expected)
    # the encoder whose embeddings generated the signals decodes better than an unrelated one
    assert mean["top5"] > table.loc[(OTHER, "mean", "true")]["top5"]
    assert (out / "encoders.pt").is_file()
