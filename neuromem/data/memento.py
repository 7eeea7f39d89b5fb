"""Memento10K (Newman et al. 2020): ~10,000 three-second videos with memorability and decay.

Layout: ``<root>/memento_{train,val,test}_data.json`` (JSON lists of records with ``filename``,
``mem_score`` and ``alpha``, the memory decay rate; other fields such as captions are ignored)
and ``<root>/videos/<filename>``. Records without ``mem_score`` or ``alpha`` get NaN.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from neuromem.data.schema import IMAGE_ID, MEMORABILITY, SOURCE, SPLIT, finalize_rows
from neuromem.errors import InputError
from neuromem.runtime.storage import exists, join_uri, read_text

DATASET = "memento10k"
SPLITS = ("train", "val", "test")


def list_memento(root: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """List Memento10K's videos.

    Parameters
    ----------
    root : path or URI
        Directory holding the JSON files and ``videos/``.
    split : {"train", "val", "test"} or None
        One split, or ``None`` for every split whose JSON file exists.

    Returns
    -------
    pandas.DataFrame
        Base columns (``image_id`` = video file name, ``split`` = the JSON file it came from,
        ``memorability`` = ``mem_score``) and ``alpha`` (float64).
    """
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown Memento10K split {split!r}; expected one of {SPLITS} or None")
    wanted = SPLITS if split is None else (split,)
    parts = []
    for name in wanted:
        uri = join_uri(root, f"memento_{name}_data.json")
        if split is None and not exists(uri):
            continue
        parts.append(_read_records(uri, name))
    if not parts:
        raise InputError(f"no memento_{{train,val,test}}_data.json under {root}")
    rows = pd.concat(parts, ignore_index=True)
    rows[SOURCE] = [join_uri(root, "videos", name) for name in rows[IMAGE_ID]]
    return finalize_rows(rows, DATASET)


def _read_records(uri: str, split: str) -> pd.DataFrame:
    try:
        records = json.loads(read_text(uri))
    except json.JSONDecodeError as error:
        raise InputError(f"{uri} is not valid JSON: {error}") from None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "filename" in r for r in records
    ):
        raise InputError(f"{uri}: expected a JSON list of records with a 'filename' field")
    return pd.DataFrame(
        {
            IMAGE_ID: [str(r["filename"]) for r in records],
            SPLIT: split,
            MEMORABILITY: [float(r.get("mem_score", np.nan)) for r in records],
            "alpha": np.array([r.get("alpha", np.nan) for r in records], dtype=np.float64),
        }
    )
