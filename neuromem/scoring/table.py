"""The score-table format: Parquet datasets of ROI scores and raw float16 vertex responses.

A score table is a directory of Parquet files (any pyarrow filesystem: local path or URI such as
``s3://bucket/table``). Its columns are the dataset reader's columns, ``encoder``, one float32
column per ROI named ``roi_<NAME>``, and optionally ``vertices``: a ``fixed_size_binary(40968)``
column whose every value holds the 20,484 fsaverage5 responses of one image as raw little-endian
float16. That encoding decodes with :func:`numpy.frombuffer` straight from the column's data
buffer, about 40 times faster than a ``fixed_size_list<float16>`` column.

The schema metadata key ``b"neuromem"`` holds a JSON object describing how the table was made
(encoder spec, weights hash, atlas, ROI definitions, neuromem version, creation time, command
line). Failed inputs live in the ``errors/`` sub-directory, which readers here skip.
"""

from __future__ import annotations

import datetime as _dt
import json
import mmap
import os
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from neuromem.cortex.surface import N_VERTICES, check_n_vertices
from neuromem.errors import InputError, UnknownNameError, VertexCountError
from neuromem.runtime.storage import ERRORS_DIR, resolve

VERTICES_COLUMN = "vertices"
"""Name of the column holding each row's 20,484 vertex responses."""

VERTEX_DTYPE = np.dtype("<f2")
"""On-disk element type of the ``vertices`` column: little-endian float16."""

VERTEX_BYTES = N_VERTICES * VERTEX_DTYPE.itemsize
"""Bytes per ``vertices`` value: 40,968."""

VERTICES_TYPE = pa.binary(VERTEX_BYTES)
"""Arrow type of the ``vertices`` column: ``fixed_size_binary(40968)``."""

ROI_PREFIX = "roi_"
"""Prefix of every ROI score column (``roi_FFA``, ``roi_lh_FFA``, ...)."""

METADATA_KEY = b"neuromem"
"""Schema metadata key under which the table's JSON description is stored."""


PathOrDataset = str | os.PathLike | ds.Dataset


def open_table(path_or_dataset: PathOrDataset, *, filesystem=None) -> ds.Dataset:
    """Open a score table as a :class:`pyarrow.dataset.Dataset` (no data is read).

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pyarrow.dataset.Dataset
        Directory or single Parquet file, a local path or a filesystem URI (``s3://...``,
        ``gs://...``, ``file://...``); an already opened dataset is returned as is.
    filesystem : pyarrow.fs.FileSystem, optional
        Filesystem for ``path_or_dataset`` when it is not a URI.

    Returns
    -------
    pyarrow.dataset.Dataset
        The table's Parquet files in sorted order, without the ``_errors/`` sub-directory.
    """
    if isinstance(path_or_dataset, ds.Dataset):
        return path_or_dataset
    source = os.fspath(path_or_dataset)
    if filesystem is None:
        filesystem, path = resolve(source)
    else:
        path = source
    try:
        return ds.dataset(
            path,
            format="parquet",
            filesystem=filesystem,
            ignore_prefixes=[".", "_", ERRORS_DIR],
        )
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"cannot open score table {source!r}: {exc}; expected a Parquet file or a directory "
            "of Parquet files written by `neuromem score`"
        ) from exc


def vertices_to_arrow(responses_bv: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Encode vertex responses as a ``vertices`` column (raw little-endian float16 per row).

    Parameters
    ----------
    responses_bv : array-like of shape (B, 20484)
        Responses of B images (any float dtype or a CPU torch tensor; cast to float16, so values
        beyond ±65504 become ±inf).

    Returns
    -------
    pyarrow.FixedSizeBinaryArray
        B values of type ``fixed_size_binary(40968)``, no nulls.
    """
    responses_bv = np.asarray(responses_bv)
    if responses_bv.ndim != 2:
        raise VertexCountError(
            f"responses must be 2-D (images, {N_VERTICES} vertices); got shape {responses_bv.shape}"
        )
    check_n_vertices(responses_bv, name="responses")
    return arrays_to_arrow(responses_bv, VERTEX_DTYPE)


def arrays_to_arrow(values_nk: np.ndarray, dtype: np.dtype | str) -> pa.FixedSizeBinaryArray:
    """Encode ``N`` arrays of ``K`` values as a raw column: one ``fixed_size_binary`` per row.

    The table codec of every fixed-length array column (``vertices``, layer features, pixels):
    each value holds the row's ``K`` numbers as raw bytes of ``dtype`` (give it with an explicit
    byte order, e.g. ``"<f4"``), so :func:`arrays_from_arrow` decodes a column with
    :func:`numpy.frombuffer` straight from its data buffer. Store such columns plain
    (:func:`neuromem.runtime.storage.parquet_write_options`).

    Parameters
    ----------
    values_nk : array-like of shape (N, K) or (N, ...)
        Values per row (trailing axes are flattened); cast to ``dtype``.
    dtype : numpy dtype
        On-disk element type.

    Returns
    -------
    pyarrow.FixedSizeBinaryArray
        ``N`` values of type ``fixed_size_binary(K · itemsize)``, no nulls.
    """
    dtype = np.dtype(dtype)
    raw_nk = np.ascontiguousarray(np.asarray(values_nk), dtype=dtype)
    raw_nk = raw_nk.reshape(len(raw_nk), -1)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(raw_nk.shape[1] * dtype.itemsize), len(raw_nk), [None, pa.py_buffer(raw_nk)]
    )


def arrays_from_arrow(column: pa.Array | pa.ChunkedArray, n_values: int,
                      dtype: np.dtype | str) -> np.ndarray:
    """Decode a raw column written by :func:`arrays_to_arrow` to ``(N, n_values)`` of ``dtype``.

    Raises
    ------
    InputError
        When the column is not ``fixed_size_binary(n_values · itemsize)``, or has nulls.
    """
    dtype = np.dtype(dtype)
    expected = pa.binary(n_values * dtype.itemsize)
    if not column.type.equals(expected):
        raise InputError(f"a column of {n_values} {dtype} values per row must have type "
                         f"{expected}; got {column.type}")
    if column.null_count:
        raise InputError(f"a column of {n_values} {dtype} values per row has "
                         f"{column.null_count} null rows")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_chunk_values(chunk, n_values, dtype) for chunk in chunks if len(chunk)]
    return np.concatenate(parts) if parts else np.empty((0, n_values), dtype)


def _chunk_values(chunk: pa.Array, n_values: int, dtype: np.dtype) -> np.ndarray:
    """The ``(len(chunk), n_values)`` view of one raw chunk's data buffer (no copy)."""
    return np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk) * n_values,
                         offset=chunk.offset * n_values * dtype.itemsize).reshape(-1, n_values)


LARGE_ARRAY_BYTES = 64 * 2**20
"""From this size on, decoded vertex arrays are allocated by :func:`empty_pages`."""


def empty_pages(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised array; large ones in anonymous memory of ordinary 4 KiB pages.

    numpy asks the kernel for transparent huge pages on every large allocation
    (``madvise(MADV_HUGEPAGE)``), and faulting in huge pages is what made reading a whole
    table slow: :func:`read_vertices` of 58,000 rows (2.4 GB of float16) in a fresh process took
    6.6-7.8 s of CPU with ``np.empty`` and 2.5-3.2 s with this allocation (3 runs each, alternated,
    2-core machine shared with other jobs). The memory is released with the array.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    if count * dtype.itemsize < LARGE_ARRAY_BYTES:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, count * dtype.itemsize), dtype=dtype,
                         count=count).reshape(shape)


def decode_vertices(
    column: pa.Array | pa.ChunkedArray,
    *,
    dtype: np.dtype | type = np.float16,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a ``vertices`` column into a ``(N, 20484)`` array without per-row work.

    Parameters
    ----------
    column : pyarrow.Array or pyarrow.ChunkedArray of fixed_size_binary(40968)
        The column; null rows decode to NaN.
    dtype : numpy dtype
        Floating dtype of the result (float16 returns the stored values bit for bit).
    out : ndarray of shape (N, 20484), optional
        Where to write the values (must have ``dtype``); allocated when not given.

    Returns
    -------
    ndarray of shape (N, 20484)
    """
    if not column.type.equals(VERTICES_TYPE):
        raise InputError(
            f"the {VERTICES_COLUMN!r} column has type {column.type}; expected {VERTICES_TYPE} "
            f"holding {N_VERTICES} raw little-endian float16 values per row (see "
            "neuromem.scoring.table.vertices_to_arrow)"
        )
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.kind != "f":
        raise InputError(f"vertex values decode to a floating dtype; got {dtype}")
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n_rows = sum(len(chunk) for chunk in chunks)
    if out is None:
        out = empty_pages((n_rows, N_VERTICES), dtype)
    elif out.shape != (n_rows, N_VERTICES) or out.dtype != dtype:
        raise InputError(f"out must be {(n_rows, N_VERTICES)} {dtype}; got {out.shape} {out.dtype}")
    start = 0
    for chunk in chunks:
        n = len(chunk)
        if n:
            values_nv = _chunk_values(chunk, N_VERTICES, VERTEX_DTYPE)
            if dtype == VERTEX_DTYPE:
                out[start : start + n] = values_nv
            else:  # a table lookup is several times faster than numpy's float16 cast
                np.take(
                    _float16_lookup(dtype),
                    values_nv.view(np.uint16),
                    out=out[start : start + n],
                    mode="clip",  # indices are always in range; "raise" would buffer `out`
                )
            if chunk.null_count:
                out[start : start + n][np.asarray(chunk.is_null())] = np.nan
        start += n
    return out


@lru_cache(maxsize=4)
def _float16_lookup(dtype: np.dtype) -> np.ndarray:
    """Value of every float16 bit pattern in ``dtype``, indexed by the pattern as uint16."""
    with np.errstate(invalid="ignore", over="ignore"):
        lookup = np.arange(2**16, dtype=np.uint16).view(VERTEX_DTYPE).astype(dtype)
    lookup.flags.writeable = False
    return lookup


def as_filter_expression(filters) -> ds.Expression | None:
    """A pyarrow dataset expression from an expression or DNF filters (``[("split", "=", "test")]``)."""
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    return pq.filters_to_expression(filters)


def _check_columns(dataset: ds.Dataset, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise UnknownNameError(
            f"score table has no column(s) {missing}; it has {dataset.schema.names}"
            + (
                ". Vertex responses are only stored when `neuromem score` runs with --vertices"
                if VERTICES_COLUMN in missing
                else ""
            )
        )


def _row_group_fragments(dataset: ds.Dataset, start: int, stop: int):
    """Fragments holding rows ``start:stop`` (whole row groups) and the table row they start at."""
    position, first, fragments = 0, None, []
    for fragment in dataset.get_fragments():
        wanted = []
        for row_group in fragment.row_groups:
            if position + row_group.num_rows > start and position < stop:
                first = position if first is None else first
                wanted.append(row_group.id)
            position += row_group.num_rows
        if wanted:
            fragments.append(fragment.subset(row_group_ids=wanted))
        if position >= stop:
            break
    return fragments, first


def read_vertices(
    path_or_dataset: PathOrDataset,
    *,
    filters=None,
    rows: slice | tuple[int, int] | None = None,
    column: str = VERTICES_COLUMN,
    dtype: np.dtype | type = np.float16,
    filesystem=None,
    n_threads: int = 3,
) -> np.ndarray:
    """Read a score table's vertex responses as a ``(N, 20484)`` array.

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pyarrow.dataset.Dataset
        The score table (see :func:`open_table`).
    filters : pyarrow.dataset.Expression or list of tuples, optional
        Row filter, e.g. ``[("split", "=", "test")]`` or ``pc.field("split") == "test"``.
    rows : slice or (start, stop), optional
        Rows to read, counted after filtering in file order (step must be 1). Without filters,
        only the row groups holding these rows are read.
    column : str
        Name of the vertex column.
    dtype : numpy dtype
        Floating dtype of the result; float16 (the default) returns the stored values exactly.
    filesystem : pyarrow.fs.FileSystem, optional
        Filesystem for a path that is not a URI.
    n_threads : int
        Files read and decoded at once when ``rows`` is not given. Most of the time goes to
        first-touch page faults of the fresh output array, whose latency a thread more than
        the cores hides: 58,000 rows on 2 cores took 1.3-1.6 s (5 runs, median 1.5 s) with 3
        threads, 1.4-2.1 s (median 1.7 s) with 2 (fresh processes, quiet machine; see
        ``benchmarks/vertex_corr.py``).

    Returns
    -------
    ndarray of shape (N, 20484)
        Row ``i`` is the ``i``-th selected row of the table, in file order.
    """
    dataset = open_table(path_or_dataset, filesystem=filesystem)
    _check_columns(dataset, [column])
    expression = as_filter_expression(filters)
    if rows is None:  # files decoded in parallel straight into their slices of one array
        fragments = list(dataset.get_fragments(filter=expression))
        counts = [fragment.count_rows(filter=expression) for fragment in fragments]
        starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        out = empty_pages((int(starts[-1]), N_VERTICES), dtype)

        def read_file(i: int) -> None:
            table = fragments[i].to_table(columns=[column], filter=expression, use_threads=False)
            decode_vertices(table.column(column), dtype=dtype, out=out[starts[i] : starts[i + 1]])

        with ThreadPoolExecutor(max(1, n_threads)) as pool:
            list(pool.map(read_file, range(len(fragments))))
        return out
    start, stop, step = (slice(*rows) if isinstance(rows, tuple) else rows).indices(
        dataset.count_rows(filter=expression)
    )
    if step != 1:
        raise InputError(f"rows must be a contiguous slice (step 1); got step {step}")
    stop = max(start, stop)
    if expression is None:
        fragments, first = _row_group_fragments(dataset, start, stop)
        if not fragments:
            return np.empty((0, N_VERTICES), dtype=dtype)
        sub = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
        table = sub.to_table(columns=[column]).slice(start - first, stop - start)
    else:
        table = dataset.to_table(columns=[column], filter=expression).slice(start, stop - start)
    return decode_vertices(table.column(column), dtype=dtype)


def iter_batches(
    path_or_dataset: PathOrDataset,
    *,
    columns: Sequence[str] | None = None,
    filters=None,
    batch_size: int = 4096,
    filesystem=None,
) -> Iterator[pa.RecordBatch]:
    """Stream a score table as record batches, one row group at a time, in file order.

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pyarrow.dataset.Dataset
        The score table (see :func:`open_table`).
    columns : sequence of str, optional
        Columns to read (all when not given); unknown names raise :class:`UnknownNameError`.
    filters : pyarrow.dataset.Expression or list of tuples, optional
        Row filter.
    batch_size : int
        Most rows per batch (row groups larger than this are split).
    filesystem : pyarrow.fs.FileSystem, optional
        Filesystem for a path that is not a URI.

    Yields
    ------
    pyarrow.RecordBatch
        Batches; decode the vertex column with :func:`decode_vertices`.
    """
    dataset = open_table(path_or_dataset, filesystem=filesystem)
    if columns is not None:
        _check_columns(dataset, columns)
    expression = as_filter_expression(filters)
    # file by file, at most one batch read ahead: memory stays bounded by one row group
    for fragment in dataset.get_fragments(filter=expression):
        yield from fragment.to_batches(
            schema=dataset.schema,
            columns=None if columns is None else list(columns),
            filter=expression,
            batch_size=batch_size,
            batch_readahead=1,
        )


def table_files(path_or_dataset: PathOrDataset, *, filesystem=None) -> list[str]:
    """The Parquet files of a score table, sorted (the unit of work of a map-reduce)."""
    return sorted(open_table(path_or_dataset, filesystem=filesystem).files)


def roi_columns(schema_or_df: pa.Schema | pd.DataFrame | pa.Table | Sequence[str]) -> list[str]:
    """The ROI score columns (``roi_<NAME>``) of a schema, table, data frame or list of names."""
    if isinstance(schema_or_df, pa.Schema | pa.Table):
        names = (
            schema_or_df.schema.names if isinstance(schema_or_df, pa.Table) else schema_or_df.names
        )
    elif isinstance(schema_or_df, pd.DataFrame):
        names = [str(c) for c in schema_or_df.columns]
    else:
        names = list(schema_or_df)
    return [name for name in names if name.startswith(ROI_PREFIX)]


def build_metadata(
    *,
    encoder: Mapping[str, Any],
    atlas: str | Mapping[str, Any] | None = None,
    rois: Mapping[str, Any] | None = None,
    command: Sequence[str] | str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON description of a score table, with version, time and command filled in.

    Parameters
    ----------
    encoder : mapping
        The encoder's :meth:`~neuromem.encoders.base.BrainEncoder.metadata`: at least ``spec``;
        usually ``weights_sha256`` and ``trained`` (False for random weights).
    atlas : str or mapping, optional
        Atlas name or description the ROIs were defined on.
    rois : mapping, optional
        ROI definitions (name → definition as :class:`~neuromem.cortex.rois.RoiSet` records them).
    command : sequence of str or str, optional
        The command line that made the table (``sys.argv`` when not given).
    **extra
        Further JSON-serialisable entries.

    Returns
    -------
    dict
        Keys ``encoder``, ``atlas``, ``rois``, ``neuromem_version``, ``created`` (UTC ISO 8601),
        ``command`` and the extra ones.
    """
    from neuromem import __version__

    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = shlex.join(str(part) for part in command)
    return {
        "encoder": dict(encoder),
        "atlas": atlas,
        "rois": None if rois is None else dict(rois),
        "neuromem_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        **extra,
    }


def write_metadata(schema_or_table: pa.Schema | pa.Table, metadata: Mapping[str, Any]):
    """Return the schema or table with ``metadata`` stored as JSON under key ``b"neuromem"``.

    Other schema metadata (e.g. pandas') is kept. Use :func:`build_metadata` to make
    ``metadata``; it must be JSON-serialisable.
    """
    try:
        payload = json.dumps(dict(metadata), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InputError(f"score-table metadata must be JSON-serialisable: {exc}") from exc
    schema = schema_or_table.schema if isinstance(schema_or_table, pa.Table) else schema_or_table
    merged = {**(schema.metadata or {}), METADATA_KEY: payload}
    return (
        schema_or_table.replace_schema_metadata(merged)
        if isinstance(schema_or_table, pa.Table)
        else schema.with_metadata(merged)
    )


def read_metadata(
    path_or_schema: PathOrDataset | pa.Schema | pa.Table, *, filesystem=None
) -> dict[str, Any]:
    """The JSON description stored in a score table's schema (``{}`` when there is none).

    Parameters
    ----------
    path_or_schema : str, os.PathLike, pyarrow.dataset.Dataset, pyarrow.Schema or pyarrow.Table
        The score table, or a schema or table read from one. For a directory, the schema of its
        first file is read.
    filesystem : pyarrow.fs.FileSystem, optional
        Filesystem for a path that is not a URI.
    """
    if isinstance(path_or_schema, pa.Table):
        schema = path_or_schema.schema
    elif isinstance(path_or_schema, pa.Schema):
        schema = path_or_schema
    else:
        schema = open_table(path_or_schema, filesystem=filesystem).schema
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"score-table metadata under {METADATA_KEY!r} is not JSON: {exc}") from exc


__all__ = [
    "ERRORS_DIR",
    "METADATA_KEY",
    "ROI_PREFIX",
    "VERTEX_BYTES",
    "VERTEX_DTYPE",
    "VERTICES_COLUMN",
    "VERTICES_TYPE",
    "as_filter_expression",
    "build_metadata",
    "decode_vertices",
    "iter_batches",
    "open_table",
    "read_metadata",
    "read_vertices",
    "roi_columns",
    "table_files",
    "vertices_to_arrow",
    "write_metadata",
]
