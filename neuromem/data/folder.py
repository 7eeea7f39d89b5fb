"""A folder of images (any depth), with optional scores from a CSV.

Images are files ending in one of :data:`IMAGE_EXTENSIONS` (case-insensitive), found
recursively; ``image_id`` is the path relative to the root, ``/``-separated. The optional CSV
has an ``image_id`` column (same relative paths) and optionally ``memorability`` and
``category``; missing columns become null.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pandas as pd

from neuromem.data.schema import CATEGORY, IMAGE_ID, MEMORABILITY, SOURCE, finalize_rows
from neuromem.errors import InputError
from neuromem.runtime.storage import join_uri, list_files, read_bytes

DATASET = "folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_folder(
    root: str | os.PathLike, scores: str | os.PathLike | None = None, split: str | None = None
) -> pd.DataFrame:
    """List the images under ``root``.

    Parameters
    ----------
    root : path or URI
        Directory searched recursively.
    scores : path or URI or None
        CSV with columns ``image_id`` and optionally ``memorability`` (float) and ``category``.
        CSV ids matching no image are counted in a :class:`UserWarning`; images missing from
        the CSV get null scores.
    split : str or None
        Only ``None``: a folder has no splits.

    Returns
    -------
    pandas.DataFrame
        Base columns (see :mod:`neuromem.data.schema`), sorted by ``image_id``.

    Raises
    ------
    InputError
        No images, an unreadable CSV, a CSV without ``image_id``, non-numeric memorability or
        repeated CSV ids.
    """
    if split is not None:
        raise InputError(f"an image folder has no splits; got split={split!r}")
    ids = list_files(os.fspath(root), IMAGE_EXTENSIONS)
    if not ids:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    rows = pd.DataFrame({IMAGE_ID: ids, SOURCE: [join_uri(root, i) for i in ids]})
    if scores is not None:
        table = _read_scores(os.fspath(scores))
        unmatched = int((~table[IMAGE_ID].isin(set(ids))).sum())
        if unmatched:
            warnings.warn(
                f"{unmatched} of {len(table)} ids in {scores} match no image under {root}",
                UserWarning,
                stacklevel=2,
            )
        rows = rows.merge(table, on=IMAGE_ID, how="left")
    return finalize_rows(rows, DATASET)


def _read_scores(uri: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(io.BytesIO(read_bytes(uri)), dtype={IMAGE_ID: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot read scores CSV {uri}: {reason}") from None
    if IMAGE_ID not in table:
        raise InputError(
            f"scores CSV {uri} needs an 'image_id' column (path relative to the folder); "
            f"found {list(table.columns)}"
        )
    if table[IMAGE_ID].duplicated().any():
        raise InputError(f"scores CSV {uri}: image_id values repeat")
    if MEMORABILITY in table:
        try:
            table[MEMORABILITY] = pd.to_numeric(table[MEMORABILITY]).astype(np.float64)
        except (ValueError, TypeError):
            raise InputError(f"scores CSV {uri}: memorability must be numeric") from None
    else:
        table[MEMORABILITY] = np.nan
    if CATEGORY not in table:
        table[CATEGORY] = None
    return table[[IMAGE_ID, MEMORABILITY, CATEGORY]]
