"""Dataset dispatch and the Ray layer: listings become a ``ray.data.Dataset`` of payload bytes.

:func:`list_rows` calls a dataset's pure listing function; :func:`open_dataset` turns the
listing into a Ray Dataset and adds ``media`` and ``payload`` (see :mod:`neuromem.data.schema`)
in a ``map_batches`` stage. Bytes are read with :mod:`pyarrow.fs`, so sources may be local paths
or URIs (``s3://``, ``gs://``, ``file://``). Pixels are not decoded here
(:mod:`neuromem.data.decode` does that where they are used).

Sources of the form ``<file>.hdf5#<index>`` (NSD) are rows of the file's image brick; they
are read with h5py by sorted index within each batch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from neuromem.data.schema import (
    IMAGE_ID,
    LOADED_SCHEMA,
    MEDIA,
    MEDIA_IMAGE,
    MEDIA_UNREADABLE,
    MEDIA_VIDEO,
    PAYLOAD,
    SOURCE,
    array_media,
    rows_to_arrow,
)
from neuromem.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    import ray.data

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


def open_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    split: str | None = None,
    exclude_ids: Iterable[str] | None = None,
    rows_per_block: int = 256,
    read_batch_size: int = 32,
    **options,
) -> ray.data.Dataset:
    """Open a dataset as a Ray Dataset with ``media`` and ``payload`` columns.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : path or URI
        The dataset's root directory.
    split : str or None
        Passed to the listing function (``None``: every row).
    exclude_ids : iterable of str or None
        ``image_id`` values to leave out (e.g. rows already scored, to resume); dropped from the
        listing before any byte is read.
    rows_per_block : int
        Listing rows per input block (the unit of parallelism of the read stage).
    read_batch_size : int
        Rows per ``map_batches`` call that reads bytes (and per output block).
    **options
        Other options of the listing function.

    Returns
    -------
    ray.data.Dataset
        Lazy; the listing's columns plus ``media`` (string) and ``payload`` (binary).

    Raises
    ------
    InputError
        When no rows are left to read (the error says how many were excluded).
    """
    import ray.data

    if split is not None:
        options["split"] = split
    rows = list_rows(name, root, **options)
    rows = drop_ids(rows, exclude_ids)
    if rows.empty:
        raise InputError(f"{name} at {root}: no rows to read (listing empty or all ids excluded)")
    table = rows_to_arrow(rows)
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]
    return ray.data.from_arrow(blocks).map_batches(
        load_payloads, batch_size=read_batch_size, batch_format="pyarrow"
    )


def drop_ids(rows: pd.DataFrame, exclude_ids: Iterable[str] | None) -> pd.DataFrame:
    """Rows whose ``image_id`` is not in ``exclude_ids`` (all rows when it is ``None``)."""
    if exclude_ids is None:
        return rows
    excluded = set(map(str, exclude_ids))
    return rows[~rows[IMAGE_ID].isin(excluded)].reset_index(drop=True)


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


# ----------------------------------------------------------------------------------------------
# File access through pyarrow.fs (local paths and URIs alike)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URI (``s3://bucket/key``, ``file:///x``)."""
    text = os.fspath(uri)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot open {text!r}: {error}") from None
    return pafs.LocalFileSystem(), os.path.abspath(text)


def join_uri(root: str | os.PathLike, *parts: str) -> str:
    """Join a root (local path or URI) and ``/``-separated parts; local roots become absolute."""
    text = os.fspath(root)
    base = text.rstrip("/") if "://" in text else os.path.abspath(text)
    return "/".join([base, *(p.strip("/") for p in parts)])


def read_bytes(uri: str) -> bytes:
    """All bytes of a file (local path or URI); a missing file raises :class:`InputError`."""
    filesystem, path = resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise InputError(f"file not found: {uri}") from None


def read_text(uri: str) -> str:
    """A UTF-8 text file (local path or URI)."""
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    """Whether a file or directory exists (local path or URI)."""
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def list_files(root: str, extensions: tuple[str, ...]) -> list[str]:
    """Paths relative to ``root`` (``/``-separated, sorted) of files with these extensions.

    The search is recursive; extensions are compared case-insensitively (give them lower-case,
    with the dot).
    """
    filesystem, base = resolve(root)
    info = filesystem.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{root} is not a directory")
    selector = pafs.FileSelector(base, recursive=True)
    found = [
        entry.path[len(base) :].lstrip("/")
        for entry in filesystem.get_file_info(selector)
        if entry.type == pafs.FileType.File and entry.path.lower().endswith(extensions)
    ]
    return sorted(found)
