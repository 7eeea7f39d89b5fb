"""Brain signals to decode from, the held-out images, and the arrays of one decoding job.

Signals come from a score table (measured or predicted: the ``vertices`` column or the ROI
columns, one row per presentation, a ``subject`` column when there are several subjects) or
from a ``.npz`` file with ``signals`` (N, ...) (EEG/MEG channels × time, or any shape),
``image_id`` (N,) and optionally ``subject`` (N,). Both are read through
:mod:`neuromem.runtime.storage` (local paths or URIs).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from neuromem.data.schema import IMAGE_ID, SOURCE
from neuromem.errors import InputError
from neuromem.runtime.storage import read_bytes

#: What a score table's signal is: its vertex responses or its ROI columns.
SIGNAL_KINDS = ("vertices", "rois")
#: Subject of rows without a ``subject``.
ALL_SUBJECTS = "all"


@dataclass
class Signals:
    """Brain signals, one row per presentation.

    Attributes
    ----------
    values : ndarray, shape (N, ...)
        float32 signals.
    image_ids, subjects : ndarray of str, shape (N,)
        Image and subject of each presentation.
    """

    values: np.ndarray
    image_ids: np.ndarray
    subjects: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.values) == len(self.image_ids) == len(self.subjects):
            raise InputError("signals, image_id and subject must have the same length; got "
                             f"{len(self.values)}, {len(self.image_ids)}, {len(self.subjects)}")

    def keep(self, image_ids: set[str]) -> Signals:
        """The presentations of ``image_ids`` only."""
        return self._rows(np.isin(self.image_ids, sorted(image_ids)))

    def of_subject(self, subject: str) -> Signals:
        """The presentations to one subject."""
        return self._rows(self.subjects == subject)

    def _rows(self, mask: np.ndarray) -> Signals:
        return Signals(self.values[mask], self.image_ids[mask], self.subjects[mask])


def read_npz_signals(location: str) -> Signals:
    """Signals of a ``.npz`` file (``signals``, ``image_id``, optionally ``subject``).

    Raises
    ------
    InputError
        A missing array, or a file that is not an ``.npz``.
    """
    try:
        data = np.load(io.BytesIO(read_bytes(location)), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{location} is not an .npz file: {error}") from None
    with data:
        for key in ("signals", IMAGE_ID):
            if key not in data:
                raise InputError(f"{location}: missing array {key!r}; expected signals (N, ...), "
                                 "image_id (N,) and optionally subject (N,)")
        values = data["signals"].astype(np.float32)
        image_ids = data[IMAGE_ID].astype(str)
        subjects = (data["subject"].astype(str) if "subject" in data
                    else np.full(len(values), ALL_SUBJECTS))
    return Signals(values, image_ids, subjects)


def read_table_signals(table: str, kind: str = "vertices") -> Signals:
    """Signals of a score table: its ``vertices`` or its ROI columns, one row per presentation."""
    from neuromem.scoring.table import VERTICES_COLUMN, decode_vertices, open_table, roi_columns

    if kind not in SIGNAL_KINDS:
        raise InputError(f"--signal must be one of {', '.join(SIGNAL_KINDS)}, got {kind!r}")
    dataset = open_table(table)
    has_subject = "subject" in dataset.schema.names
    columns = [VERTICES_COLUMN] if kind == "vertices" else roi_columns(dataset.schema)
    if not columns or columns[0] not in dataset.schema.names:
        raise InputError(f"{table} has no {'vertices column' if kind == 'vertices' else 'ROI columns'}"
                         "; choose the other --signal")
    data = dataset.to_table(columns=[IMAGE_ID, *columns, *(["subject"] if has_subject else [])])
    if kind == "vertices":
        values = decode_vertices(data.column(VERTICES_COLUMN), dtype=np.float32)
    else:
        values = np.stack([data.column(c).to_numpy(zero_copy_only=False) for c in columns],
                          1).astype(np.float32)
    image_ids = np.asarray(data.column(IMAGE_ID).to_pylist(), dtype=str)
    subjects = (np.asarray(data.column("subject").to_pylist(), dtype=str) if has_subject
                else np.full(len(values), ALL_SUBJECTS))
    return Signals(values, image_ids, subjects)


def read_sources(table: str, image_ids: list[str]) -> list[str]:
    """Image sources of ``image_ids`` from a table with ``image_id`` and ``source``.

    Raises
    ------
    InputError
        When the table lacks the columns or some image.
    """
    from neuromem.scoring.table import open_table

    dataset = open_table(table)
    if IMAGE_ID not in dataset.schema.names or SOURCE not in dataset.schema.names:
        raise InputError(f"{table}: expected columns {IMAGE_ID} and {SOURCE}; give the table of "
                         "images with --images")
    frame = dataset.to_table(columns=[IMAGE_ID, SOURCE]).to_pandas()
    frame[IMAGE_ID] = frame[IMAGE_ID].astype(str)
    sources = frame.drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)[SOURCE]
    missing = [i for i in image_ids if i not in sources.index]
    if missing:
        raise InputError(f"{table}: no source for {len(missing)} images (e.g. {missing[:3]})")
    return sources.loc[image_ids].astype(str).tolist()


def held_out_images(image_ids: np.ndarray, n_test: int, seed: int) -> list[str]:
    """``n_test`` distinct image ids drawn with ``seed`` (sorted first, so the draw does not
    depend on row order)."""
    unique = np.unique(np.asarray(image_ids, dtype=str))
    if n_test >= len(unique):
        raise InputError(f"--n-test {n_test} leaves no training images ({len(unique)} images)")
    return sorted(np.random.default_rng(seed).choice(unique, n_test, replace=False).tolist())


def prepare_job(signals: Signals, embeddings_by_id: dict[str, np.ndarray], test_ids: list[str],
                *, shuffle: bool, seed: int) -> dict[str, np.ndarray]:
    """Arrays of one decoding job (one subject and image network).

    Training signals are z-scored with the training rows' mean and standard deviation and
    paired with their images' embeddings (re-paired at random when ``shuffle``: the control
    whose retrieval must be at chance); per test image, the mean of its test presentations.

    Returns
    -------
    dict
        ``train_signals`` (N_train, ...), ``train_embeddings`` (N_train, D), ``test_signals``
        (n_test, ...) and ``test_embeddings`` (n_test, D), float32.
    """
    test_set = set(test_ids)
    is_test = np.array([i in test_set for i in signals.image_ids])
    train_x = signals.values[~is_test]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_ids = signals.image_ids[~is_test]
    if shuffle:
        train_ids = np.random.default_rng(seed).permutation(train_ids)
    test_x = np.stack([signals.values[signals.image_ids == i].mean(0) for i in test_ids])
    return {
        "train_signals": ((train_x - mean) / std).astype(np.float32),
        "train_embeddings": np.stack([embeddings_by_id[i] for i in train_ids]).astype(np.float32),
        "test_signals": ((test_x - mean) / std).astype(np.float32),
        "test_embeddings": np.stack([embeddings_by_id[i] for i in test_ids]).astype(np.float32),
    }
