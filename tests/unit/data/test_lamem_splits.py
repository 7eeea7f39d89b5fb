"""LaMem split parsing (neuromem.data.lamem): the one reader of split memberships."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.data.lamem import attach_splits, list_lamem, split_indices, split_members, split_rows
from neuromem.data.synthetic import write_lamem
from neuromem.errors import InputError


@pytest.fixture(scope="module")
def lamem(tmp_path_factory):
    root = tmp_path_factory.mktemp("lamem")
    truth = write_lamem(root, n_images=30, image_size=16).set_index("image_id")
    return root, truth, list_lamem(root)


def test_split_indices_follow_the_split_files(lamem):
    _, truth, rows = lamem
    splits = split_indices(rows["splits"].tolist())
    assert list(splits) == [f"test_{k}" for k in range(1, 6)]
    for k in range(1, 6):
        train, test = splits[f"test_{k}"]
        membership = truth.loc[rows["image_id"], f"split_{k}"].to_numpy()
        np.testing.assert_array_equal(train, np.flatnonzero(membership == "train"))
        np.testing.assert_array_equal(test, np.flatnonzero(membership == "test"))
    val = split_indices(rows["splits"].tolist(), part="val")
    np.testing.assert_array_equal(
        val["val_2"][1], np.flatnonzero(truth.loc[rows["image_id"], "split_2"] == "val"))


def test_split_members_skip_missing_memberships():
    members = split_members(["train_1,test_2", None, "", "test_1"])
    assert {k: v.tolist() for k, v in members.items()} == {
        "train_1": [0], "test_2": [0], "test_1": [3]}


def test_split_rows_and_attached_splits(lamem, tmp_path):
    root, truth, rows = lamem
    bare = rows.drop(columns="splits").iloc[::-1].reset_index(drop=True)
    attached = attach_splits(bare, f"file://{root}")
    train, test = split_rows(attached, "3")
    assert set(train["image_id"]) == set(truth.index[truth["split_3"] == "train"])
    assert set(test["image_id"]) == set(truth.index[truth["split_3"] == "test"])
    with pytest.raises(InputError, match="no train_6/test_6"):
        split_rows(attached, "6")
    with pytest.raises(InputError, match="no 'splits' column"):
        split_rows(bare, "1")
