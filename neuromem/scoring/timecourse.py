"""The time-course table: each video's ROI responses at every fMRI step, as Parquet.

A brain encoder that reads videos (TRIBE v2) predicts a response *time course* for a clip:
one row of 20,484 vertex values per fMRI step the clip overlaps (1 Hz: ``ceil(duration)``
steps, step ``s`` covering seconds ``[s, s + 1)`` after the clip's start, already shifted for the
haemodynamic delay). A score table keeps one number per ROI, the mean over those steps; the
time-course table keeps the steps.

Schema
------
One row per video:

``image_id`` : string
    The row's key in the score table.
``n_steps`` : int32
    Number of fMRI steps ``T`` of this video.
``roi_<NAME>`` : list<float32>
    One column per ROI, named as in the score table; each value holds the ``T`` responses of
    that ROI in step order (its mean is the score table's ``roi_<NAME>`` value).

The schema metadata key ``b"neuromem.timecourse"`` holds a JSON object with ``format`` (1),
``step_seconds`` (duration of one step, s), ``rois`` (the ROI names in column order) and any
provenance the writer adds (encoder metadata, ROI set ...).

Inside a score table (``neuromem score --keep-timecourse``)
-----------------------------------------------------------
The score table keeps each row's time course in one more column, so that resuming, errors and
parts work as for every other column:

``timecourse`` : list<float32>
    The ``T × R`` ROI responses of a video, step-major (the ``R`` values of step 0, then step
    1 ...), ROIs in the order of the table's ``roi_<NAME>`` columns; null for still images.
    The mean over steps of each ROI is the row's ``roi_<NAME>`` value.

The table metadata's ``timecourse`` entry gives ``step_seconds``.
:func:`score_table_timecourses` reads the column back as :class:`Timecourses`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from neuromem.errors import InputError
from neuromem.scoring.table import ROI_PREFIX

TIMECOURSE_METADATA_KEY = b"neuromem.timecourse"
"""Schema metadata key of the time-course table's JSON description."""

TIMECOURSE_FORMAT = 1
"""Version of the layout described in the module docstring."""

TIMECOURSE_COLUMN = "timecourse"
"""Column of a score table holding each video's ROI time course (module docstring)."""

TIMECOURSE_TYPE = pa.list_(pa.float32())
"""Arrow type of :data:`TIMECOURSE_COLUMN`."""


@dataclass
class Timecourses:
    """Time courses of several videos (what a time-course table holds).

    Attributes
    ----------
    image_ids : list of str
        One per video.
    responses : list of numpy.ndarray
        float32 ``(T_i, R)`` per video: ROI responses at each of its ``T_i`` steps.
    roi_names : list of str
        The ``R`` ROI names, without the ``roi_`` prefix.
    step_seconds : float
        Duration of one step, s.
    metadata : dict
        Provenance stored with the table.
    """

    image_ids: list[str]
    responses: list[np.ndarray]
    roi_names: list[str]
    step_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def means(self) -> np.ndarray:
        """Mean over the steps of each video, ``(n_videos, R)`` float32 (the ROI scores)."""
        return np.stack([r.mean(axis=0) for r in self.responses]).astype(np.float32)


def timecourse_table(timecourses: Timecourses) -> pa.Table:
    """Encode time courses as an Arrow table in the layout of the module docstring.

    Raises
    ------
    InputError
        Ids and responses differ in number, a response is not ``(T, R)`` with ``T ≥ 1``, or an
        id repeats.
    """
    ids, responses, names = timecourses.image_ids, timecourses.responses, timecourses.roi_names
    if len(ids) != len(responses):
        raise InputError(f"{len(ids)} image ids for {len(responses)} time courses")
    if len(set(ids)) != len(ids):
        raise InputError("image ids of a time-course table must be unique")
    arrays = [np.asarray(r, dtype=np.float32) for r in responses]
    for image_id, array in zip(ids, arrays, strict=True):
        if array.ndim != 2 or array.shape[1] != len(names) or array.shape[0] < 1:
            raise InputError(
                f"time course of {image_id!r} has shape {array.shape}; expected "
                f"(n_steps >= 1, {len(names)} ROIs)"
            )
    n_steps = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(n_steps)]).astype(np.int32))
    columns: dict[str, pa.Array] = {
        "image_id": pa.array(ids, pa.string()),
        "n_steps": pa.array(n_steps, pa.int32()),
    }
    stacked = np.concatenate(arrays) if arrays else np.zeros((0, len(names)), np.float32)
    for r, name in enumerate(names):
        values = pa.array(np.ascontiguousarray(stacked[:, r]), pa.float32())
        columns[ROI_PREFIX + name] = pa.ListArray.from_arrays(offsets, values)
    description = {
        **timecourses.metadata,
        "format": TIMECOURSE_FORMAT,
        "step_seconds": float(timecourses.step_seconds),
        "rois": list(names),
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({TIMECOURSE_METADATA_KEY: json.dumps(description)})


def read_timecourses(table: pa.Table) -> Timecourses:
    """Decode a table written by :func:`timecourse_table` (e.g. read back from Parquet).

    Raises
    ------
    InputError
        The table lacks the time-course metadata or a column, or a row's lists do not hold
        ``n_steps`` values.
    """
    raw = (table.schema.metadata or {}).get(TIMECOURSE_METADATA_KEY)
    if raw is None:
        raise InputError("not a time-course table: no neuromem.timecourse schema metadata")
    description: Mapping[str, Any] = json.loads(raw)
    if description.get("format") != TIMECOURSE_FORMAT:
        raise InputError(f"time-course table format {description.get('format')!r} is not "
                         f"{TIMECOURSE_FORMAT}")
    names = list(description["rois"])
    missing = [c for c in ("image_id", "n_steps", *(ROI_PREFIX + n for n in names))
               if c not in table.column_names]
    if missing:
        raise InputError(f"time-course table lacks columns {missing}")
    n_steps = table.column("n_steps").to_numpy()
    per_roi = []
    for name in names:
        column = table.column(ROI_PREFIX + name).combine_chunks()
        lengths = np.diff(column.offsets.to_numpy())
        if not np.array_equal(lengths, n_steps):
            raise InputError(f"column {ROI_PREFIX + name} does not hold n_steps values per row")
        flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        per_roi.append(flat)
    stacked_tr = np.stack(per_roi, axis=1) if per_roi else np.zeros((int(n_steps.sum()), 0))
    bounds = np.concatenate([[0], np.cumsum(n_steps)])
    responses = [stacked_tr[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    metadata = {k: v for k, v in description.items() if k not in ("format", "step_seconds", "rois")}
    return Timecourses(
        image_ids=[str(v) for v in table.column("image_id").to_pylist()],
        responses=responses,
        roi_names=names,
        step_seconds=float(description["step_seconds"]),
        metadata=metadata,
    )



def timecourse_column(responses: list[np.ndarray | None], n_rois: int) -> pa.Array:
    """The ``timecourse`` column of a score table: one step-major list per row.

    Parameters
    ----------
    responses : list of numpy.ndarray or None
        float32 ``(T_i, R)`` per row; None for a row without a time course (a still).
    n_rois : int
        ``R``.

    Raises
    ------
    InputError
        A response is not ``(T, R)`` with ``T >= 1``.
    """
    values = []
    for array in responses:
        if array is None:
            values.append(None)
            continue
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != n_rois or array.shape[0] < 1:
            raise InputError(f"time course of shape {array.shape}; expected (n_steps >= 1, "
                             f"{n_rois} ROIs)")
        values.append(array.ravel())
    return pa.array(values, TIMECOURSE_TYPE)


def score_table_timecourses(table: pa.Table, step_seconds: float) -> Timecourses:
    """The time courses stored in a score table's ``timecourse`` column (rows with one).

    Parameters
    ----------
    table : pyarrow.Table
        A score table read with its ``image_id``, ``roi_<NAME>`` and ``timecourse`` columns.
    step_seconds : float
        Duration of one step, s (the table metadata's ``timecourse.step_seconds``).

    Raises
    ------
    InputError
        No ``timecourse`` column, or a list whose length is not a multiple of the ROI count.
    """
    if TIMECOURSE_COLUMN not in table.column_names:
        raise InputError("the score table has no timecourse column (score with "
                         "--keep-timecourse)")
    names = [c.removeprefix(ROI_PREFIX) for c in table.column_names if c.startswith(ROI_PREFIX)]
    ids, responses = [], []
    for image_id, flat in zip(table.column("image_id").to_pylist(),
                              table.column(TIMECOURSE_COLUMN).to_pylist(), strict=True):
        if flat is None:
            continue
        if not names or len(flat) % len(names):
            raise InputError(f"time course of {image_id!r} holds {len(flat)} values, not a "
                             f"multiple of {len(names)} ROIs")
        ids.append(str(image_id))
        responses.append(np.asarray(flat, np.float32).reshape(-1, len(names)))
    return Timecourses(ids, responses, names, float(step_seconds))
