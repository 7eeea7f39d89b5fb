"""Natural Scenes Dataset (NSD) stimuli: 73,000 COCO images in one HDF5 brick.

Files, at their release paths under ``root`` or directly in ``root``:

- ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``: one row per image (``cocoId``,
  ``cocoSplit``, ``nsdId``, ``shared1000``, ``BOLD5000``, ``subject1..8``,
  ``subjectN_rep0..2``, ...);
- ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: dataset ``imgBrick``, uint8
  ``(73000, 425, 425, 3)``.

Ids: the CSV's ``nsdId`` is **0-based** and is the row of ``imgBrick``. ``image_id`` is
``"nsd-{nsdId + 1:05d}"``, the 1-based "73k id" NSD's papers and design files use, so
``nsd-00001`` is ``nsdId`` 0. ``source`` is ``"<brick path>#<nsdId>"``; load_payloads reads
those rows with h5py and gives ``media`` ``"array:425x425x3"``.
"""

from __future__ import annotations

import io
import os

import pandas as pd

from neuromem.data.schema import IMAGE_ID, SOURCE, SPLIT, finalize_rows
from neuromem.errors import InputError
from neuromem.runtime.storage import exists, join_uri, read_bytes

DATASET = "nsd"
CSV_PATHS = ("nsddata/experiments/nsd/nsd_stim_info_merged.csv", "nsd_stim_info_merged.csv")
BRICK_PATHS = ("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "nsd_stimuli.hdf5")
N_SUBJECTS = 8
#: Splits :func:`list_nsd` accepts besides ``None``.
SPLITS = ("shared1000", *(f"subject{n}" for n in range(1, N_SUBJECTS + 1)))


def list_nsd(root: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """List NSD's images.

    Parameters
    ----------
    root : path or URI
        NSD root (release layout) or a directory holding both files.
    split : str or None
        ``None`` for all images, ``"shared1000"`` for the 1,000 images every subject saw, or
        ``"subjectN"`` (N = 1..8) for the images subject N saw.

    Returns
    -------
    pandas.DataFrame
        Base columns (memorability and category null) and the CSV's columns (its unnamed
        index column dropped; ``shared1000``, ``BOLD5000``, ``flagged`` and ``subjectN`` as
        bool).
    """
    if split is not None and split not in SPLITS:
        raise InputError(
            f"unknown NSD split {split!r}; expected None or one of {', '.join(SPLITS)}"
        )
    csv_uri = _find(root, CSV_PATHS)
    brick_uri = _find(root, BRICK_PATHS)
    table = pd.read_csv(io.BytesIO(read_bytes(csv_uri)))
    table = table.drop(columns=[c for c in table.columns if c.startswith("Unnamed")])
    missing = {"nsdId", "cocoId", "shared1000", *(f"subject{n}" for n in range(1, 9))} - set(table)
    if missing:
        raise InputError(
            f"{csv_uri} lacks columns {sorted(missing)}; is it nsd_stim_info_merged.csv?"
        )
    for column in ("shared1000", "BOLD5000", "flagged", *(f"subject{n}" for n in range(1, 9))):
        if column in table:
            table[column] = table[column].astype(bool)
    if split is not None:
        table = table[table[split]].copy()
        table[SPLIT] = split
    table[IMAGE_ID] = [f"nsd-{i + 1:05d}" for i in table["nsdId"]]
    table[SOURCE] = [f"{brick_uri}#{i}" for i in table["nsdId"]]
    return finalize_rows(table, DATASET)


def _find(root: str | os.PathLike, candidates: tuple[str, ...]) -> str:
    for relative in candidates:
        uri = join_uri(root, relative)
        if exists(uri):
            return uri
    raise InputError(f"NSD: none of {list(candidates)} found under {root}")
