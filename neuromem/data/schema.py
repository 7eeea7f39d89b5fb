"""Column names and types shared by every dataset reader (the "row schema").

A reader's listing is a :class:`pandas.DataFrame` with one row per stimulus and these base
columns, followed by dataset-specific ones:

``image_id`` (string)
    identifier, unique within a dataset.
``dataset`` (string)
    dataset name (``lamem``, ``nsd``, ``memento10k``, ``bold5000``, ``folder``).
``split`` (string, nullable)
    the split this row was listed for; null when no split was asked for.
``source`` (string)
    where the bytes live: a path or URI (``s3://...``); NSD uses
    ``<path>/nsd_stimuli.hdf5#<index>`` (a row of the ``imgBrick`` dataset).
``memorability`` (float64, nullable)
    the dataset's memorability score; NaN when unknown.
``category`` (string, nullable)
    coarse category (``object``, ``scene``); null when unknown.

Once loaded by :func:`neuromem.data.readers.load_payloads` two more columns follow:

``media`` (string)
    ``"image"`` (encoded image file), ``"video"`` (encoded video file) or
    ``"array:{H}x{W}x3"`` (raw C-ordered uint8 RGB pixels, ``H * W * 3`` bytes).
``payload`` (binary)
    the bytes named by ``media``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.errors import InputError

IMAGE_ID = "image_id"
DATASET = "dataset"
SPLIT = "split"
SOURCE = "source"
MEMORABILITY = "memorability"
CATEGORY = "category"
MEDIA = "media"
PAYLOAD = "payload"

#: The base columns every listing starts with, in order.
BASE_COLUMNS = (IMAGE_ID, DATASET, SPLIT, SOURCE, MEMORABILITY, CATEGORY)
#: The columns :func:`~neuromem.data.readers.load_payloads` adds.
LOADED_COLUMNS = (MEDIA, PAYLOAD)

#: Arrow types of the base columns (nullable where the table above says so).
BASE_SCHEMA = pa.schema(
    [
        pa.field(IMAGE_ID, pa.string(), nullable=False),
        pa.field(DATASET, pa.string(), nullable=False),
        pa.field(SPLIT, pa.string()),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(MEMORABILITY, pa.float64()),
        pa.field(CATEGORY, pa.string()),
    ]
)
#: Arrow types of the loaded columns.
LOADED_SCHEMA = pa.schema([pa.field(MEDIA, pa.string()), pa.field(PAYLOAD, pa.binary())])

MEDIA_IMAGE = "image"
MEDIA_VIDEO = "video"
#: ``media`` of a row whose file could not be read; the reason follows, ``payload`` is empty.
#: Scoring jobs record such rows in their errors table instead of failing.
MEDIA_UNREADABLE = "unreadable: "
_ARRAY_MEDIA = re.compile(r"^array:(\d+)x(\d+)x3$")

#: Coarse categories used by the readers that know them.
CATEGORY_OBJECT = "object"
CATEGORY_SCENE = "scene"


def array_media(height: int, width: int) -> str:
    """Return the ``media`` string for raw ``(height, width, 3)`` uint8 pixels."""
    return f"array:{height}x{width}x3"


def parse_array_media(media: str) -> tuple[int, int] | None:
    """Return ``(H, W)`` for an ``"array:{H}x{W}x3"`` media string, ``None`` for other media."""
    match = _ARRAY_MEDIA.match(media)
    return (int(match.group(1)), int(match.group(2))) if match else None


def finalize_rows(
    rows: pd.DataFrame, dataset: str, unique_by: tuple[str, ...] = (IMAGE_ID,)
) -> pd.DataFrame:
    """Give a listing the base columns first, in order, with their types; check unique ids.

    Parameters
    ----------
    rows : pandas.DataFrame
        At least ``image_id`` and ``source``; missing ``split``, ``memorability`` and
        ``category`` become null. ``dataset`` is set to ``dataset``.
    dataset : str
        The dataset's name.
    unique_by : tuple of str
        Columns whose combination must be unique (``image_id`` for a listing; measured
        tables with one row per subject and image use ``("subject", "image_id")``).

    Returns
    -------
    pandas.DataFrame
        Base columns (string, float64 ``memorability``) then the other columns, fresh index.

    Raises
    ------
    InputError
        If ``unique_by`` values repeat.
    """
    rows = rows.copy()
    rows[DATASET] = dataset
    for column in (SPLIT, CATEGORY):
        if column not in rows:
            rows[column] = None
    if MEMORABILITY not in rows:
        rows[MEMORABILITY] = np.nan
    duplicated = rows.duplicated(list(unique_by))
    if duplicated.any():
        examples = rows.loc[duplicated, IMAGE_ID].head(3).tolist()
        raise InputError(
            f"{dataset}: {'+'.join(unique_by)} must be unique, found {int(duplicated.sum())} repeats "
            f"(e.g. {examples})"
        )
    for column in (IMAGE_ID, DATASET, SPLIT, SOURCE, CATEGORY):
        rows[column] = rows[column].astype("str")  # missing values stay missing
    rows[MEMORABILITY] = pd.to_numeric(rows[MEMORABILITY], errors="raise").astype("float64")
    extra = [c for c in rows.columns if c not in BASE_COLUMNS]
    return rows[list(BASE_COLUMNS) + extra].reset_index(drop=True)


def rows_to_arrow(rows: pd.DataFrame) -> pa.Table:
    """Convert a listing to Arrow with the base columns typed as :data:`BASE_SCHEMA`.

    Other columns keep pyarrow's inferred types. Typing the base columns explicitly keeps an
    all-null column (e.g. ``category``) a string column rather than Arrow's null type.
    """
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for field in BASE_SCHEMA:
        index = table.schema.get_field_index(field.name)
        table = table.set_column(index, field.name, table.column(index).cast(field.type))
    return table
