"""Add per-image columns to a score table, writing a copy and never losing a row.

``label-categories`` and ``assess`` compute one value per image and write them back through
:func:`write_annotated`: every Parquet file of the input table is read in turn, the new columns
are set from a ``(dataset, image_id) → value`` lookup (rows with no value get null), and the
file is written under the same relative name in the output folder, with the same row order,
the same other columns (``vertices`` included) and the same schema metadata plus a record of
the annotation. The input table is never modified. The input's ``errors/`` files are copied
and the new job's failures are added as ``errors/<stage>.parquet``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neuromem.errors import InputError

KEY_COLUMNS = ("dataset", "image_id")


def image_rows(table: str | Path, columns: tuple[str, ...] = ("source",)) -> pd.DataFrame:
    """One row per distinct image of a score table: ``dataset``, ``image_id`` and ``columns``.

    A table without a ``dataset`` column gets ``dataset`` ``""``.
    """
    from neuromem.scoring.table import open_table

    dataset = open_table(table)
    names = dataset.schema.names
    missing = [c for c in ("image_id", *columns) if c not in names]
    if missing:
        raise InputError(f"table {str(table)!r} lacks columns {missing}")
    wanted = [c for c in dict.fromkeys(("dataset", "image_id", *columns)) if c in names]
    rows = dataset.to_table(columns=wanted).to_pandas()
    if "dataset" not in rows.columns:
        rows.insert(0, "dataset", "")
    return rows.drop_duplicates(list(KEY_COLUMNS)).reset_index(drop=True)


def write_annotated(
    table: str | Path,
    out: str | Path,
    keys: pd.DataFrame,
    values: Mapping[str, pa.Array],
    *,
    annotation: Mapping[str, Any],
    errors: pd.DataFrame | None = None,
    stage: str = "annotate",
) -> dict[str, int]:
    """Write a copy of ``table`` to ``out`` with the columns of ``values`` added or replaced.

    Parameters
    ----------
    table : path
        Input score table (directory of Parquet files, or one file).
    out : path
        Output directory; must not be the input and must not hold Parquet files yet.
    keys : pandas.DataFrame
        ``dataset`` and ``image_id`` of the annotated images, ``K`` rows, unique.
    values : mapping of str to pyarrow.Array
        New column name → ``K`` values aligned with ``keys`` (nulls allowed).
    annotation : mapping
        JSON-serialisable record appended to the ``annotations`` list of the table metadata.
    errors : pandas.DataFrame or None
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
    from neuromem.scoring.table import ERRORS_DIR, open_table, read_metadata, write_metadata

    table, out = Path(table), Path(out)
    if out.resolve() == table.resolve():
        raise InputError("--out must be a new folder, not the input table (the input is kept)")
    if out.exists() and any(out.rglob("*.parquet")):
        raise InputError(f"output folder {out} already holds Parquet files; choose a new folder")
    if keys.duplicated(list(KEY_COLUMNS)).any():
        raise InputError("annotation keys (dataset, image_id) must be unique")
    lookup = pd.Series(np.arange(len(keys)), index=pd.MultiIndex.from_frame(keys[list(KEY_COLUMNS)]))
    dataset = open_table(table)
    base = table if table.is_dir() else table.parent
    first_column = next(iter(values))
    counts = {"rows": 0, "files": 0, "rows_without_value": 0}
    for file in sorted(dataset.files):
        data = pq.read_table(file)
        ids = data.column("image_id").to_pandas()
        datasets = (
            data.column("dataset").to_pandas() if "dataset" in data.column_names
            else pd.Series([""] * data.num_rows)
        )
        position = lookup.reindex(pd.MultiIndex.from_arrays([datasets, ids])).to_numpy()
        found = ~pd.isna(position)
        take = pa.array(np.where(found, position, 0).astype(np.int64), mask=~found)
        for name, column in values.items():
            if len(column) != len(keys):
                raise InputError(f"column {name!r} has {len(column)} values for {len(keys)} keys")
            new = column.take(take)
            index = data.schema.get_field_index(name)
            field = pa.field(name, column.type)
            data = data.set_column(index, field, new) if index >= 0 else data.append_column(field, new)
        metadata = read_metadata(data.schema)
        metadata["annotations"] = [*metadata.get("annotations", []), dict(annotation)]
        data = write_metadata(data, metadata)
        target = out / Path(file).resolve().relative_to(base.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, target)
        counts["rows"] += data.num_rows
        counts["files"] += 1
        counts["rows_without_value"] += int(data.column(first_column).null_count)
    if counts["rows"] != dataset.count_rows():
        raise RuntimeError(f"rows lost: {dataset.count_rows()} in, {counts['rows']} out")
    if (base / ERRORS_DIR).is_dir():
        shutil.copytree(base / ERRORS_DIR, out / ERRORS_DIR, dirs_exist_ok=True)
    if errors is not None and len(errors):
        (out / ERRORS_DIR).mkdir(parents=True, exist_ok=True)
        errors.to_parquet(out / ERRORS_DIR / f"{stage}.parquet", index=False)
    return counts
