"""BOLD5000 (Chang et al. 2019): 4 subjects' fMRI ROI responses to ~5,000 images.

Files under ``root`` (release layout):

- ``ROIs/stim_lists/CSI0{n}_stim_lists.txt``: the stimulus file name of each presentation, one
  a line, in the order of the rows of the ROI arrays;
- ``ROIs/CSI{n}/mat/CSI{n}_ROIs_TR{1..5,34}.mat``: variables ``LHEarlyVis``, ``LHLOC``,
  ``LHOPA``, ``LHPPA``, ``LHRSC`` and their ``RH`` twins, each ``(n_presentations, n_voxels)``
  (``TR34`` is the mean of TRs 3 and 4). MATLAB v5 files are read with scipy, v7.3 (HDF5)
  files with h5py (stored column-major, so transposed on reading);
- ``BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/<name>``: images.

Measured table decisions:

- One row per (subject, stimulus): an image shown several times (a repeat may be listed with a
  ``rep_`` prefix, which is removed) has its responses **averaged over presentations**;
  ``n_presentations`` counts them. Score tables key on ``image_id``, so one value per image and
  subject is what the analyses compare with predicted responses.
- ``roi_lh_<ROI>``/``roi_rh_<ROI>`` are the means over the ROI's voxels; ``roi_<ROI>`` is the
  mean of the two hemispheres' means (not a voxel-weighted mean).
- ``category``: COCO and ImageNet images → ``object``, Scene images → ``scene`` (COCO photos
  hold scenes with objects, but they were chosen for their objects; ImageNet images are
  object-centred; the Scene set holds SUN scene categories).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from neuromem.data.schema import (
    CATEGORY,
    CATEGORY_OBJECT,
    CATEGORY_SCENE,
    IMAGE_ID,
    MEMORABILITY,
    SOURCE,
    finalize_rows,
)
from neuromem.errors import InputError
from neuromem.runtime.storage import exists, join_uri, list_files, read_bytes, read_text

DATASET = "bold5000"
ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
TRS = ("1", "2", "3", "4", "5", "34")
SOURCES = ("COCO", "ImageNet", "Scene")
STIMULI_DIR = "BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli"
_IMAGENET_NAME = re.compile(r"^n\d{8}_\d+\.", re.IGNORECASE)


def image_source(name: str) -> str:
    """BOLD5000 source of a stimulus file name: ``"COCO"``, ``"ImageNet"`` or ``"Scene"``."""
    if name.startswith("COCO_"):
        return "COCO"
    if _IMAGENET_NAME.match(name):
        return "ImageNet"
    return "Scene"


def category_of(source: str) -> str:
    """``"scene"`` for the Scene set, ``"object"`` for COCO and ImageNet (see module notes)."""
    return CATEGORY_SCENE if source == "Scene" else CATEGORY_OBJECT


def list_bold5000(root: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """List BOLD5000's presented stimulus images.

    Parameters
    ----------
    root : path or URI
        BOLD5000 root (holding ``BOLD5000_Stimuli/``).
    split : {"COCO", "ImageNet", "Scene"} or None
        One image source, or ``None`` for all.

    Returns
    -------
    pandas.DataFrame
        Base columns (``image_id`` = file name, memorability null, category from the source)
        and ``image_source``.
    """
    if split is not None and split not in SOURCES:
        raise InputError(f"unknown BOLD5000 split {split!r}; expected one of {SOURCES} or None")
    frames = []
    for source in SOURCES if split is None else (split,):
        folder = join_uri(root, STIMULI_DIR, source)
        if not exists(folder):
            continue
        names = [n for n in list_files(folder, (".jpg", ".jpeg", ".png")) if "/" not in n]
        frames.append(
            pd.DataFrame(
                {
                    IMAGE_ID: names,
                    SOURCE: [join_uri(folder, n) for n in names],
                    CATEGORY: category_of(source),
                    "image_source": source,
                }
            )
        )
    if not frames:
        raise InputError(f"no BOLD5000 stimuli under {join_uri(root, STIMULI_DIR)}")
    rows = pd.concat(frames, ignore_index=True)
    if split is not None:
        rows["split"] = split
    return finalize_rows(rows, DATASET)


def measured_table(
    root: str | os.PathLike, subjects: Sequence[int] = (1, 2, 3, 4), tr: str = "34"
) -> pd.DataFrame:
    """BOLD5000's measured ROI responses as a score table (see the module notes).

    Parameters
    ----------
    root : path or URI
        BOLD5000 root (holding ``ROIs/``).
    subjects : sequence of int
        Subjects (1..4).
    tr : str
        Which ROI file: ``"1"`` .. ``"5"`` or ``"34"`` (mean of TRs 3 and 4).

    Returns
    -------
    pandas.DataFrame
        One row per (subject, stimulus): base columns (``image_id`` = stimulus file name,
        ``source`` = its image path, ``memorability`` NaN), ``subject`` (int),
        ``image_source``, ``n_presentations``, ``encoder`` (``"measured:BOLD5000-TR{tr}"``),
        ``roi_<ROI>``, ``roi_lh_<ROI>``, ``roi_rh_<ROI>`` (float32) for ROIs EarlyVis, LOC, OPA,
        PPA, RSC.
    """
    tr = str(tr)
    if tr not in TRS:
        raise InputError(f"unknown BOLD5000 TR {tr!r}; expected one of {TRS}")
    tables = [_subject_table(root, int(subject), tr) for subject in subjects]
    rows = pd.concat(tables, ignore_index=True)
    rows[MEMORABILITY] = np.nan
    rows = finalize_rows(rows, DATASET, unique_by=("subject", IMAGE_ID))
    rows.insert(len(rows.columns), "encoder", f"measured:BOLD5000-TR{tr}")
    roi_columns = [c for c in rows.columns if c.startswith("roi_")]
    other = [c for c in rows.columns if not c.startswith("roi_")]
    return rows[other + roi_columns]


def _subject_table(root: str | os.PathLike, subject: int, tr: str) -> pd.DataFrame:
    list_uri = join_uri(root, "ROIs", "stim_lists", f"CSI0{subject}_stim_lists.txt")
    presented = [line.strip() for line in read_text(list_uri).splitlines() if line.strip()]
    names = [name.removeprefix("rep_") for name in presented]
    mat_uri = join_uri(root, "ROIs", f"CSI{subject}", "mat", f"CSI{subject}_ROIs_TR{tr}.mat")
    arrays = load_mat(mat_uri)
    means = {}
    for hemi in ("LH", "RH"):
        for roi in ROIS:
            key = f"{hemi}{roi}"
            if key not in arrays:
                raise InputError(f"{mat_uri} has no variable {key!r}; found {sorted(arrays)}")
            responses_pv = np.asarray(arrays[key], dtype=np.float64)
            responses_pv = responses_pv.reshape(len(responses_pv), -1)
            if responses_pv.shape[0] != len(names):
                raise InputError(
                    f"{mat_uri}: {key} has {responses_pv.shape[0]} rows but {list_uri} lists "
                    f"{len(names)} presentations"
                )
            means[f"roi_{hemi.lower()}_{roi}"] = responses_pv.mean(axis=1)
    per_presentation = pd.DataFrame({IMAGE_ID: names, **means})
    grouped = per_presentation.groupby(IMAGE_ID, sort=False)
    table = grouped.mean()
    table["n_presentations"] = grouped.size()
    table = table.reset_index()
    for roi in ROIS:
        table[f"roi_{roi}"] = (table[f"roi_lh_{roi}"] + table[f"roi_rh_{roi}"]) / 2.0
    ordered = [f"roi_{r}" for r in ROIS] + [f"roi_{h}_{r}" for h in ("lh", "rh") for r in ROIS]
    table[ordered] = table[ordered].astype(np.float32)
    sources = [image_source(name) for name in table[IMAGE_ID]]
    table.insert(1, "subject", subject)
    table.insert(2, "image_source", sources)
    table[CATEGORY] = [category_of(s) for s in sources]
    table[SOURCE] = [
        join_uri(root, STIMULI_DIR, s, n) for s, n in zip(sources, table[IMAGE_ID], strict=True)
    ]
    return table[[c for c in table.columns if c not in ordered] + ordered]


def load_mat(uri: str) -> dict[str, np.ndarray]:
    """Numeric variables of a MATLAB file, v5 (scipy) or v7.3 (HDF5, read with h5py).

    v7.3 arrays are stored column-major and are transposed back to MATLAB's shape.
    """
    from scipy.io import loadmat

    payload = read_bytes(uri)
    if payload[:19] == b"MATLAB 7.3 MAT-file" or payload[512:520] == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(io.BytesIO(payload), "r") as handle:
            return {
                key: np.asarray(value).T
                for key, value in handle.items()
                if isinstance(value, h5py.Dataset) and not key.startswith("#")
            }
    try:
        variables = loadmat(io.BytesIO(payload))
    except (ValueError, TypeError, NotImplementedError) as error:
        raise InputError(f"cannot read MATLAB file {uri}: {error}") from None
    return {k: v for k, v in variables.items() if not k.startswith("__")}
