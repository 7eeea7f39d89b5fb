"""LaMem (Khosla et al. 2015): ~60k images with memorability scores and 5 train/val/test splits.

Layout: ``<root>/images/<name>.jpg`` and ``<root>/splits/{train,val,test}_{1..5}.txt``, one
``<name> <score>`` line per image. Scores come from the split files (an image has the same score
in every file that lists it). The real release has no category labels (``category`` is null).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from neuromem.data.schema import IMAGE_ID, MEMORABILITY, SOURCE, SPLIT, finalize_rows
from neuromem.errors import InputError
from neuromem.runtime.storage import join_uri, list_files, read_text

DATASET = "lamem"
#: Column listing, per image, every split file that lists it (``"test_1,train_2,val_3"``).
SPLITS = "splits"
#: LaMem's split numbers.
SPLIT_NUMBERS = ("1", "2", "3", "4", "5")
_SPLIT_FILE = re.compile(r"^((?:train|val|test)_\d+)\.txt$")


def list_lamem(root: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """List LaMem's images.

    Parameters
    ----------
    root : path or URI
        Directory holding ``images/`` and ``splits/``.
    split : str or None
        A split file's stem such as ``"test_1"`` (rows of that file only, ``split`` set to it),
        or ``None`` for every image listed in any split file (``split`` null).

    Returns
    -------
    pandas.DataFrame
        Base columns (see :mod:`neuromem.data.schema`), ``image_id`` = file name as written in
        the split files, plus ``splits``: every split file listing the image, comma-separated
        and sorted (e.g. ``"test_1,train_2,..."``).

    Raises
    ------
    InputError
        No split files, an unknown ``split``, a malformed line, or conflicting scores.
    """
    split_names = [
        m.group(1)
        for f in list_files(join_uri(root, "splits"), (".txt",))
        if (m := _SPLIT_FILE.match(f))
    ]
    if not split_names:
        raise InputError(f"no LaMem split files ({{train,val,test}}_N.txt) under {root}/splits")
    if split is not None and split not in split_names:
        raise InputError(
            f"unknown LaMem split {split!r}; available: {', '.join(sorted(split_names))}"
        )
    parts = [_read_split(join_uri(root, "splits", f"{name}.txt"), name) for name in split_names]
    listed = pd.concat(parts, ignore_index=True)
    scores = listed.groupby(IMAGE_ID, sort=True)[MEMORABILITY].agg(["min", "max"])
    conflicting = scores.index[(scores["max"] - scores["min"]).abs() > 1e-6]
    if len(conflicting):
        raise InputError(
            f"LaMem: {len(conflicting)} images have different scores in different split files "
            f"(e.g. {list(conflicting[:3])})"
        )
    memberships = listed.sort_values("file").groupby(IMAGE_ID, sort=True)["file"].agg(",".join)
    rows = pd.DataFrame(
        {
            IMAGE_ID: scores.index,
            MEMORABILITY: scores["min"].to_numpy(),
            "splits": memberships.reindex(scores.index).to_numpy(),
        }
    )
    if split is not None:
        chosen = set(listed.loc[listed["file"] == split, IMAGE_ID])
        rows = rows[rows[IMAGE_ID].isin(chosen)]
        rows[SPLIT] = split
    rows[SOURCE] = [join_uri(root, "images", name) for name in rows[IMAGE_ID]]
    return finalize_rows(rows, DATASET)


def _read_split(uri: str, name: str) -> pd.DataFrame:
    ids, scores = [], []
    for number, line in enumerate(read_text(uri).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            ids.append(fields[0])
            scores.append(float(fields[1]))
        except (IndexError, ValueError):
            raise InputError(
                f"{uri} line {number}: expected '<image name> <score>', got {line!r}"
            ) from None
    return pd.DataFrame({IMAGE_ID: ids, MEMORABILITY: scores, "file": name})


def split_members(memberships_n: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Rows of each split file, from each row's memberships.

    Parameters
    ----------
    memberships_n : sequence of str or None, length N
        Per row, the comma-separated split files listing the image (the :data:`SPLITS` column
        of :func:`list_lamem`, e.g. ``"test_1,train_2,val_3"``); None or ``""`` for none.

    Returns
    -------
    dict
        Split file stem (``"train_1"``) → sorted int64 row indices.
    """
    members: dict[str, list[int]] = {}
    for row, text in enumerate(memberships_n):
        for name in (text or "").split(","):
            if name:
                members.setdefault(name.strip(), []).append(row)
    return {name: np.asarray(rows, dtype=np.int64) for name, rows in members.items()}


def split_indices(memberships_n: Sequence[str | None], *,
                  part: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LaMem's train/held-out splits as row indices.

    Parameters
    ----------
    memberships_n : sequence of str or None, length N
        See :func:`split_members`.
    part : {"test", "val"}
        Which held-out part is the second index array.

    Returns
    -------
    dict
        ``"{part}_k"`` → (rows of ``train_k``, rows of ``{part}_k``) for every ``k`` that has
        both, sorted by ``k``.
    """
    members = split_members(memberships_n)
    splits = {}
    for name in sorted(members, key=lambda n: (n.partition("_")[2], n)):
        kind, _, k = name.partition("_")
        if kind == part and f"train_{k}" in members:
            splits[name] = (members[f"train_{k}"], members[name])
    return splits


def split_rows(rows: pd.DataFrame, k: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``train_k`` and ``test_k`` rows of a listing with a :data:`SPLITS` column.

    Raises
    ------
    InputError
        When the rows have no :data:`SPLITS` column, or no ``train_k``/``test_k`` rows.
    """
    if SPLITS not in rows or rows[SPLITS].isna().all():
        raise InputError(f"LaMem split {k}: the rows have no {SPLITS!r} column (list them with "
                         "list_lamem, or give the LaMem folder)")
    splits = split_indices(rows[SPLITS].tolist())
    if f"test_{k}" not in splits:
        raise InputError(f"LaMem split {k}: no train_{k}/test_{k} rows in the table "
                         f"(splits found: {', '.join(splits) or 'none'})")
    train, test = splits[f"test_{k}"]
    return rows.iloc[train].reset_index(drop=True), rows.iloc[test].reset_index(drop=True)


def attach_splits(rows: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """``rows`` with the :data:`SPLITS` column of the LaMem folder ``root`` (by ``image_id``)."""
    memberships = list_lamem(root).set_index(IMAGE_ID)[SPLITS]
    return rows.assign(**{SPLITS: rows[IMAGE_ID].astype(str).map(memberships)})
