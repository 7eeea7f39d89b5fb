"""A folder of images (any depth), with optional scores from a CSV.

Images are files ending in one of :data:`IMAGE_EXTENSIONS` (case-insensitive), found
recursively; ``image_id`` is the path relative to the root, ``/``-separated. Other files
(``.heic``, ``.txt``, ...) are skipped and counted: the listing's ``attrs["skipped_files"]``
maps each skipped extension to its count, and jobs report it.

The optional CSV has an ``image_id`` column and optionally ``memorability`` and ``category``;
missing columns become null. A CSV id matches an image by its relative path, or by that path
without its extension (``cat_01`` matches ``cat_01.jpg``) when that is unambiguous. When fewer
than :data:`MIN_MATCHED_SHARE` of the CSV's ids match an image, the listing stops with an error
showing examples of both, since the scores would otherwise silently be missing.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter

import numpy as np
import pandas as pd

from neuromem.data.schema import CATEGORY, IMAGE_ID, MEMORABILITY, SOURCE, finalize_rows
from neuromem.errors import InputError
from neuromem.runtime.storage import join_uri, list_files, read_bytes

DATASET = "folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Fewest share of a scores CSV's ids that must match an image.
MIN_MATCHED_SHARE = 0.5


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
        Ids match with or without the file extension; CSV ids matching no image are counted in
        a :class:`UserWarning`; images missing from the CSV get null scores.
    split : str or None
        Only ``None``: a folder has no splits.

    Returns
    -------
    pandas.DataFrame
        Base columns (see :mod:`neuromem.data.schema`), sorted by ``image_id``;
        ``attrs["skipped_files"]``: ``{extension: count}`` of the files that are not images.

    Raises
    ------
    InputError
        No images, an unreadable CSV, a CSV without ``image_id``, non-numeric memorability,
        repeated CSV ids, or a CSV whose ids mostly match no image.
    """
    if split is not None:
        raise InputError(f"an image folder has no splits; got split={split!r}")
    files = list_files(os.fspath(root))
    ids = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    skipped = Counter(_extension(f) for f in files if not f.lower().endswith(IMAGE_EXTENSIONS))
    if not ids:
        found = f"; found only {_describe_skipped(skipped)}" if skipped else ""
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}{found}")
    rows = pd.DataFrame({IMAGE_ID: ids, SOURCE: [join_uri(root, i) for i in ids]})
    if scores is not None:
        table = _read_scores(os.fspath(scores))
        table[IMAGE_ID] = match_ids(table[IMAGE_ID], ids, os.fspath(scores))
        unmatched = int(table[IMAGE_ID].isna().sum())
        if unmatched:
            warnings.warn(
                f"{unmatched} of {len(table)} ids in {scores} match no image under {root}",
                UserWarning,
                stacklevel=2,
            )
        rows = rows.merge(table.dropna(subset=[IMAGE_ID]), on=IMAGE_ID, how="left")
    rows = finalize_rows(rows, DATASET)
    rows.attrs["skipped_files"] = dict(sorted(skipped.items()))
    return rows


def match_ids(csv_ids: pd.Series, image_ids: list[str], csv_name: str) -> pd.Series:
    """The image id each CSV id names (exactly, or without its extension); NaN for none.

    Raises
    ------
    InputError
        When fewer than :data:`MIN_MATCHED_SHARE` of the CSV ids match an image; the message
        shows examples of unmatched CSV ids and of image ids.
    """
    exact = set(image_ids)
    stems: dict[str, list[str]] = {}
    for image_id in image_ids:
        stems.setdefault(os.path.splitext(image_id)[0], []).append(image_id)
    matched = []
    for csv_id in csv_ids.astype(str):
        if csv_id in exact:
            matched.append(csv_id)
        elif len(stems.get(csv_id, ())) == 1:
            matched.append(stems[csv_id][0])
        else:
            matched.append(None)
    result = pd.Series(matched, index=csv_ids.index, dtype=object)
    if len(csv_ids) and result.notna().mean() < MIN_MATCHED_SHARE:
        missing = csv_ids[result.isna()].astype(str).head(3).tolist()
        raise InputError(
            f"only {int(result.notna().sum())} of {len(csv_ids)} image_id values in {csv_name} "
            f"match an image: e.g. {missing} match none of the image ids, which look like "
            f"{image_ids[:3]} (paths relative to the folder, with or without the extension)")
    return result


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower() or "(no extension)"


def _describe_skipped(skipped: Counter) -> str:
    return ", ".join(f"{count} {extension}" for extension, count in sorted(skipped.items()))


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
