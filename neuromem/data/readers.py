"""Dataset dispatch and payload loading: listings, then the bytes each row names.

:func:`list_rows` calls a dataset's pure listing function; :func:`load_payloads` adds ``media``
and ``payload`` (see :mod:`neuromem.data.schema`) to a batch of listing rows — the image-map
engine (:mod:`neuromem.jobs.image_map`) runs it as a Ray Data stage. Bytes are read through
:mod:`neuromem.runtime.storage`, so sources may be local paths or URIs (``s3://``, ``gs://``,
``file://``). Pixels are not decoded here (:mod:`neuromem.data.batch` does that).

Sources of the form ``<file>.hdf5#<index>`` (NSD) are rows of the file's image brick; they
are read with h5py by sorted index within each batch.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.data.schema import (
    LOADED_SCHEMA,
    MEDIA,
    MEDIA_IMAGE,
    MEDIA_UNREADABLE,
    MEDIA_VIDEO,
    PAYLOAD,
    SOURCE,
    array_media,
)
from neuromem.errors import InputError, UnknownNameError
from neuromem.runtime.storage import read_bytes, resolve

#: Dataset names :func:`list_rows` and :func:`open_dataset` accept.
DATASETS = ("lamem", "nsd", "memento10k", "bold5000", "folder")

_LISTERS = {
    "lamem": ("neuromem.data.lamem", "list_lamem"),
    "nsd": ("neuromem.data.nsd", "list_nsd"),
    "memento10k": ("neuromem.data.memento", "list_memento"),
    "bold5000": ("neuromem.data.bold5000", "list_bold5000"),
    "folder": ("neuromem.data.folder", "list_folder"),
}

#: Name of the HDF5 dataset holding NSD's images.
NSD_BRICK = "imgBrick"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")


def list_rows(name: str, root: str | os.PathLike, **options) -> pd.DataFrame:
    """List a dataset's rows (no bytes read) with its listing function.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : path or URI
        The dataset's root directory.
    **options
        Passed to the listing function (e.g. ``split="test_1"`` for LaMem).

    Returns
    -------
    pandas.DataFrame
        Rows in the schema of :mod:`neuromem.data.schema`.
    """
    if name not in _LISTERS:
        raise UnknownNameError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    module_name, function_name = _LISTERS[name]
    lister = getattr(importlib.import_module(module_name), function_name)
    return lister(root, **options)


def load_payloads(rows: pa.Table) -> pa.Table:
    """Add ``media`` and ``payload`` to a batch of listing rows (the ``map_batches`` function).

    Encoded files get ``media`` ``"video"`` (by extension, see :data:`VIDEO_EXTENSIONS`) or
    ``"image"``; ``<file>#<index>`` sources get ``"array:{H}x{W}x3"`` and the raw pixels.
    A file that cannot be read gets an empty payload and ``media`` ``"unreadable: <reason>"``
    (:data:`~neuromem.data.schema.MEDIA_UNREADABLE`), so the job records it and carries on.
    """
    sources = rows.column(SOURCE).to_pylist()
    media = [""] * len(sources)
    payloads: list[bytes] = [b""] * len(sources)
    bricks: dict[str, list[tuple[int, int]]] = {}
    for position, source in enumerate(sources):
        path, _, index = source.rpartition("#")
        if path and index.isdigit():
            bricks.setdefault(path, []).append((int(index), position))
            continue
        try:
            payloads[position] = read_bytes(source)
        except (InputError, OSError) as exc:  # one unreadable file must not fail the job
            media[position] = f"{MEDIA_UNREADABLE}{exc}"
            continue
        media[position] = MEDIA_VIDEO if source.lower().endswith(VIDEO_EXTENSIONS) else MEDIA_IMAGE
    for path, wanted in bricks.items():
        for (_, position), pixels_hw3 in zip(wanted, read_brick_rows(path, wanted), strict=True):
            payloads[position] = pixels_hw3.tobytes()
            media[position] = array_media(*pixels_hw3.shape[:2])
    rows = rows.append_column(LOADED_SCHEMA.field(MEDIA), pa.array(media, pa.string()))
    return rows.append_column(LOADED_SCHEMA.field(PAYLOAD), pa.array(payloads, pa.binary()))


def read_brick_rows(path: str, wanted: list[tuple[int, int]]) -> list[np.ndarray]:
    """Read rows of an HDF5 image brick (``imgBrick``) in the order of ``wanted``.

    ``wanted`` holds ``(index, anything)`` pairs; rows are fetched in one sorted h5py read.
    Returns uint8 arrays of shape ``(H, W, 3)``.
    """
    import h5py

    indices = np.array([index for index, _ in wanted], dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    filesystem, fs_path = resolve(path)
    with filesystem.open_input_file(fs_path) as handle, h5py.File(handle, "r") as h5:
        if NSD_BRICK not in h5:
            raise InputError(
                f"{path} has no dataset {NSD_BRICK!r}; expected NSD's nsd_stimuli.hdf5"
            )
        brick = h5[NSD_BRICK]
        if unique[-1] >= brick.shape[0]:
            raise InputError(f"{path}: index {unique[-1]} out of range ({brick.shape[0]} images)")
        pixels_nhw3 = brick[unique.tolist()]
    return [pixels_nhw3[i] for i in inverse]
