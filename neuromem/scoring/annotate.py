"""Add per-image columns to a score table, writing a copy and never losing a row.

``label-categories`` and ``assess`` compute one value per image and write them back through
:func:`write_annotated`: every Parquet file of the input table is read in turn, the new columns
are set from a ``(dataset, image_id) → value`` lookup (rows with no value get null), and the
file is written under the same relative name in the output folder, with the same row order, the
same other columns (``vertices`` included) and the same schema metadata plus a record of the
annotation. The input table is never modified. The input's ``_errors/`` files are copied and the
new job's failures are added as ``_errors/<stage>.parquet``. Input and output may be local paths
or URIs (:mod:`neuromem.runtime.storage`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neuromem.data.schema import IMAGE_ID, SOURCE
from neuromem.errors import InputError
from neuromem.runtime.storage import (
    ERRORS_DIR,
    display,
    exists,
    is_dir,
    join_uri,
    list_files,
    parquet_write_options,
    read_bytes,
    resolve,
    write_bytes,
)
from neuromem.scoring.table import open_table, read_metadata, write_metadata

KEY_COLUMNS = ("dataset", IMAGE_ID)
"""Columns identifying an image across the rows of a table (a table may repeat an image)."""


def image_rows(table: str, columns: tuple[str, ...] = (SOURCE,),
               images: str | None = None) -> pd.DataFrame:
    """One row per distinct image of a score table: ``dataset``, ``image_id`` and ``columns``.

    Parameters
    ----------
    table : str
        Score table (local path or URI).
    columns : tuple of str
        Further columns to read (``source`` by default).
    images : str or None
        Image root: ``source`` becomes ``images/<image_id>`` instead of the table's column.

    A table without a ``dataset`` column gets ``dataset`` ``""``.
    """
    dataset = open_table(table)
    names = dataset.schema.names
    wanted_columns = tuple(c for c in columns if not (images is not None and c == SOURCE))
    missing = [c for c in (IMAGE_ID, *wanted_columns) if c not in names]
    if missing:
        hint = " (give --images ROOT to read ROOT/<image_id>)" if SOURCE in missing else ""
        raise InputError(f"table {display(table)} lacks columns {missing}{hint}")
    wanted = [c for c in dict.fromkeys(("dataset", IMAGE_ID, *wanted_columns)) if c in names]
    rows = dataset.to_table(columns=wanted).to_pandas()
    if "dataset" not in rows.columns:
        rows.insert(0, "dataset", "")
    rows = rows.drop_duplicates(list(KEY_COLUMNS)).reset_index(drop=True)
    if images is not None:
        rows[SOURCE] = [join_uri(images, str(image_id)) for image_id in rows[IMAGE_ID]]
    return rows


def check_output(table: str, out: str, *, overwrite: bool) -> None:
    """Refuse an output that is the input, or a folder already holding Parquet files.

    With ``overwrite``, an output folder holding files is allowed (its Parquet files are
    replaced); the input is never an allowed output.
    """
    in_fs, in_path = resolve(table)
    out_fs, out_path = resolve(out)
    if type(in_fs) is type(out_fs) and in_path.rstrip("/") == out_path.rstrip("/"):
        raise InputError("--out must be a new folder, not the input table (the input is kept)")
    if not overwrite and exists(out) and list_files(out, (".parquet",)):
        raise InputError(f"{display(out)} already holds Parquet files; choose a new --out, or "
                         "add --overwrite to replace them")


def write_annotated(
    table: str,
    out: str,
    keys: pd.DataFrame,
    values: Mapping[str, pa.Array],
    *,
    annotation: Mapping[str, Any],
    errors: pa.Table | None = None,
    stage: str = "annotate",
) -> dict[str, int]:
    """Write a copy of ``table`` to ``out`` with the columns of ``values`` added or replaced.

    Parameters
    ----------
    table : str
        Input score table (folder of Parquet files, or one file; local path or URI).
    out : str
        Output folder (local path or URI), checked with :func:`check_output`.
    keys : pandas.DataFrame
        ``dataset`` and ``image_id`` of the annotated images, ``K`` rows, unique.
    values : mapping of str to pyarrow.Array
        New column name → ``K`` values aligned with ``keys`` (nulls allowed).
    annotation : mapping
        JSON-serialisable record appended to the ``annotations`` list of the table metadata.
    errors : pyarrow.Table or None
        Failed images (``image_id``, ``source``, ``stage``, ``error``), written to
        ``out/_errors/<stage>.parquet``.
    stage : str
        Name of that errors file.

    Returns
    -------
    dict
        ``rows`` written, ``files`` written, ``rows_without_value`` (rows whose key is not in
        ``keys``, or whose value is null in the first column of ``values``).
    """
    if keys.duplicated(list(KEY_COLUMNS)).any():
        raise InputError("annotation keys (dataset, image_id) must be unique")
    for name, column in values.items():
        if len(column) != len(keys):
            raise InputError(f"column {name!r} has {len(column)} values for {len(keys)} keys")
    lookup = pd.Series(np.arange(len(keys)),
                       index=pd.MultiIndex.from_frame(keys[list(KEY_COLUMNS)].astype(str)))
    dataset = open_table(table)
    filesystem = dataset.filesystem
    base = _table_folder(table, dataset)
    first_column = next(iter(values))
    counts = {"rows": 0, "files": 0, "rows_without_value": 0}
    for file in sorted(dataset.files):
        data = pq.read_table(file, filesystem=filesystem)
        ids = data.column(IMAGE_ID).to_pandas().astype(str)
        datasets = (data.column("dataset").to_pandas().astype(str)
                    if "dataset" in data.column_names else pd.Series([""] * data.num_rows))
        position = lookup.reindex(pd.MultiIndex.from_arrays([datasets, ids])).to_numpy()
        found = ~pd.isna(position)
        take = pa.array(np.where(found, position, 0).astype(np.int64), mask=~found)
        for name, column in values.items():
            new = column.take(take)
            index = data.schema.get_field_index(name)
            field = pa.field(name, column.type)
            data = data.set_column(index, field, new) if index >= 0 else data.append_column(field, new)
        metadata = read_metadata(data.schema)
        metadata["annotations"] = [*metadata.get("annotations", []), dict(annotation)]
        data = write_metadata(data, metadata)
        relative = file[len(base):].lstrip("/") if file.startswith(base) else file.rsplit("/", 1)[-1]
        write_bytes(join_uri(out, relative), _parquet_bytes(data))
        counts["rows"] += data.num_rows
        counts["files"] += 1
        counts["rows_without_value"] += int(data.column(first_column).null_count)
    if counts["rows"] != dataset.count_rows():
        raise RuntimeError(f"rows lost: {dataset.count_rows()} in, {counts['rows']} out")
    errors_in = join_uri(table, ERRORS_DIR)
    if is_dir(table) and is_dir(errors_in):
        for name in list_files(errors_in, (".parquet",)):
            write_bytes(join_uri(out, ERRORS_DIR, name), read_bytes(join_uri(errors_in, name)))
    if errors is not None and errors.num_rows:
        write_bytes(join_uri(out, ERRORS_DIR, f"{stage}.parquet"), _parquet_bytes(errors))
    return counts


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **parquet_write_options(table.schema))
    return sink.getvalue()


def _table_folder(table: str, dataset) -> str:
    """Filesystem path of the table's folder (of its file, for a single-file table)."""
    filesystem, path = resolve(table)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        return path.rsplit("/", 1)[0]
    return path.rstrip("/")


def labels_from_csv(location: str, keys: pd.DataFrame) -> pd.Series:
    """Labels of ``keys`` (``dataset``, ``image_id``) from a CSV; ids not in it give null."""
    table = pd.read_csv(io.BytesIO(read_bytes(location)), dtype=str)
    missing = [c for c in ("image_id", "category") if c not in table.columns]
    if missing:
        raise InputError(f"{location}: the CSV needs columns image_id and category; "
                         f"missing {missing}")
    on = list(KEY_COLUMNS) if "dataset" in table.columns else ["image_id"]
    if table.duplicated(on).any():
        raise InputError(f"{location}: {on} repeat; give one category per image")
    merged = keys[list(KEY_COLUMNS)].merge(table[[*on, "category"]], on=on, how="left")
    return merged["category"]
