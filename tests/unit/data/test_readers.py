"""LaMem and image-folder listings on their on-disk layouts, and the payloads their rows name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from neuromem.data import DATASETS, list_rows, load_payloads, synthetic
from neuromem.data.decode import decode_image
from neuromem.data.schema import BASE_COLUMNS, BASE_SCHEMA, rows_to_arrow
from neuromem.errors import InputError, UnknownNameError


@pytest.fixture(scope="module")
def lamem_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lamem")
    truth = synthetic.write_lamem(root, n_images=40, seed=4, image_size=48)
    return root, truth


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    truth = synthetic.write_image_folder(root, n_images=12, seed=5, image_size=40)
    return root, truth


def _check_base_dtypes(rows: pd.DataFrame) -> None:
    assert tuple(rows.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert rows["memorability"].dtype == np.float64
    assert rows["image_id"].is_unique
    assert pa.Table.from_pandas(rows[list(BASE_COLUMNS)], preserve_index=False).cast(BASE_SCHEMA)


def test_lamem_listing_matches_what_was_written(lamem_root):
    root, truth = lamem_root
    rows = list_rows("lamem", root)
    _check_base_dtypes(rows)
    assert len(rows) == 40 and rows["split"].isna().all() and (rows["dataset"] == "lamem").all()
    merged = rows.merge(truth, on="image_id", suffixes=("", "_truth"))
    np.testing.assert_allclose(merged["memorability"], merged["memorability_truth"], atol=1e-9)
    assert all(
        source.endswith("/images/" + i)
        for source, i in zip(rows["source"], rows["image_id"], strict=True)
    )
    for row in merged.itertuples():  # every split membership is recorded
        expected = sorted(f"{getattr(row, f'split_{k}')}_{k}" for k in range(1, 6))
        assert row.splits.split(",") == expected


def test_lamem_split_selection(lamem_root):
    root, truth = lamem_root
    rows = list_rows("lamem", root, split="test_2")
    assert set(rows["image_id"]) == set(truth.loc[truth["split_2"] == "test", "image_id"])
    assert (rows["split"] == "test_2").all()
    assert rows["splits"].str.contains("test_2").all()
    with pytest.raises(InputError, match="available"):
        list_rows("lamem", root, split="test_9")


def test_lamem_bad_split_line_is_reported(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train_1.txt").write_text("00000001.jpg 0.5\n00000002.jpg\n")
    with pytest.raises(InputError, match="line 2"):
        list_rows("lamem", tmp_path)


def test_folder_listing_with_scores(folder_root):
    root, truth = folder_root
    rows = list_rows("folder", root, scores=root / "scores.csv")
    _check_base_dtypes(rows)
    assert sorted(rows["image_id"]) == sorted(truth["image_id"])  # nested, mixed-case extensions
    merged = rows.merge(truth, on="image_id", suffixes=("", "_truth"))
    np.testing.assert_allclose(merged["memorability"], merged["memorability_truth"])
    assert (merged["category"] == merged["category_truth"]).all()
    bare = list_rows("folder", root)
    assert bare["memorability"].isna().all() and bare["category"].isna().all()


def test_folder_csv_problems(folder_root, tmp_path):
    root, truth = folder_root
    partial = truth[["image_id", "memorability"]].iloc[:5].copy()
    partial.loc[len(partial)] = ["missing/ghost.jpg", 0.5]
    partial.to_csv(tmp_path / "partial.csv", index=False)
    with pytest.warns(UserWarning, match="1 of 6 ids"):
        rows = list_rows("folder", root, scores=tmp_path / "partial.csv")
    assert rows["category"].isna().all()  # column absent from the CSV
    assert rows["memorability"].notna().sum() == 5
    (tmp_path / "no_id.csv").write_text("name,memorability\na.jpg,0.3\n")
    with pytest.raises(InputError, match="image_id"):
        list_rows("folder", root, scores=tmp_path / "no_id.csv")
    (tmp_path / "text.csv").write_text("image_id,memorability\na.jpg,high\n")
    with pytest.raises(InputError, match="numeric"):
        list_rows("folder", root, scores=tmp_path / "text.csv")
    with pytest.raises(InputError, match="no images.*found only 1 .csv"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.csv").write_text("x")
        list_rows("folder", tmp_path / "empty")


def test_csv_ids_without_extension_match_and_mostly_unmatched_ids_stop(folder_root, tmp_path):
    root, truth = folder_root
    stems = truth.assign(image_id=truth["image_id"].str.rsplit(".", n=1).str[0])
    stems.to_csv(tmp_path / "stems.csv", index=False)
    rows = list_rows("folder", root, scores=tmp_path / "stems.csv")
    merged = rows.merge(truth, on="image_id", suffixes=("", "_truth"))
    assert len(merged) == len(truth)
    np.testing.assert_allclose(merged["memorability"], merged["memorability_truth"])
    wrong = truth.assign(image_id="img_" + truth["image_id"].str.replace("/", "_"))
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(InputError, match=r"only 0 of 12 image_id values.*e\.g\. \['img_"):
        list_rows("folder", root, scores=tmp_path / "wrong.csv")


def test_files_that_are_not_images_are_counted(folder_root, tmp_path):
    root, truth = folder_root
    rows = list_rows("folder", root)
    assert rows.attrs["skipped_files"] == {".csv": 1}  # the scores CSV beside the images


def test_unknown_dataset_name():
    assert DATASETS == ("lamem", "nsd", "memento10k", "bold5000", "folder")
    with pytest.raises(UnknownNameError, match="lamem"):
        list_rows("imagenet", "/nowhere")


def test_payloads_decode_to_written_pixels(lamem_root):
    root, truth = lamem_root
    loaded = load_payloads(rows_to_arrow(list_rows("lamem", root).iloc[10:])).to_pandas()
    assert len(loaded) == 30
    assert (loaded["media"] == "image").all()
    assert {"payload", "media", "splits", "memorability"} <= set(loaded.columns)
    for row in loaded.head(5).itertuples():
        written = np.asarray(Image.open(root / "images" / row.image_id).convert("RGB"))
        np.testing.assert_array_equal(decode_image(row.payload, row.media), written)
        index = int(row.image_id.split(".")[0]) - 1
        kind = truth.loc[truth["image_id"] == row.image_id, "category"].item()
        drawn = synthetic.sample_image(kind, np.random.default_rng([4, index]), 48)
        assert np.abs(decode_image(row.payload).astype(int) - drawn).mean() < 8  # JPEG q90
    table = load_payloads(rows_to_arrow(list_rows("lamem", root).iloc[:2]))
    assert table.schema.field("payload").type == pa.binary()


def test_payloads_through_file_uris(folder_root):
    root, _ = folder_root
    rows = list_rows("folder", f"file://{root}", scores=f"file://{root}/scores.csv")
    loaded = load_payloads(rows_to_arrow(rows)).to_pandas()
    assert len(loaded) == 12 and loaded["memorability"].notna().all()
    assert all(s.startswith("file://") for s in loaded["source"])
    assert decode_image(loaded["payload"][0]).shape == (40, 40, 3)


def test_unreadable_file_becomes_an_unreadable_row(folder_root, tmp_path):
    root, _ = folder_root
    rows = list_rows("folder", root).iloc[:2].copy()
    rows.loc[rows.index[1], "source"] = str(tmp_path / "gone.jpg")
    loaded = load_payloads(rows_to_arrow(rows)).to_pandas()
    assert loaded["media"][0] == "image" and len(loaded["payload"][0]) > 0
    assert loaded["media"][1].startswith("unreadable: ") and "gone.jpg" in loaded["media"][1]
    assert loaded["payload"][1] == b""
