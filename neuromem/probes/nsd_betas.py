"""Real fMRI targets: NSD single-trial betas on fsaverage, averaged per image, and their ceiling.

Layout read (NSD data manual)::

    ROOT/nsddata/experiments/nsd/nsd_stim_info_merged.csv
    ROOT/nsddata_betas/ppdata/subjXX/fsaverage/betas_fithrf_GLMdenoise_RR/
        {lh,rh}.betas_sessionYY.mgh     (163842, 1, 1, 750) float32, one frame per trial
        {lh,rh}.ncsnr.mgh               (163842, 1, 1, 1) float32

The trial → image mapping comes from ``nsd_stim_info_merged.csv``: for subject ``s`` the columns
``subject{s}_rep0``, ``subject{s}_rep1``, ``subject{s}_rep2`` hold the 1-based trial number
(``(session - 1) * 750 + trial_in_session``; 0 = never shown) of each of the image's three
presentations, and ``nsdId`` the 0-based index of the image in ``nsd_stimuli.hdf5``. (The same
information is in ``nsd_expdesign.mat`` as ``masterordering``/``subjectim``; the CSV needs no
MATLAB reader.)

fsaverage5 is the first 10,242 vertices of fsaverage, so each hemisphere is sliced ``[:10242]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from neuromem.errors import InputError

TRIALS_PER_SESSION = 750
N_VERTICES_HEMI = 10242
N_VERTICES_FSAVERAGE = 163842
HEMIS = ("lh", "rh")
STIM_INFO = Path("nsddata/experiments/nsd/nsd_stim_info_merged.csv")


def betas_dir(root: str | Path, subject: int) -> Path:
    """Folder of one subject's fsaverage betas (``betas_fithrf_GLMdenoise_RR``)."""
    return (
        Path(root)
        / "nsddata_betas/ppdata"
        / f"subj{subject:02d}"
        / "fsaverage/betas_fithrf_GLMdenoise_RR"
    )


def _read_fsaverage5(path: Path) -> np.ndarray:
    """Frames of one fsaverage ``.mgh`` file restricted to fsaverage5: ``(F, 10242)`` float32."""
    import nibabel as nib

    if not path.exists():
        raise InputError(f"NSD file not found: {path}")
    image = nib.load(str(path))
    shape = image.shape  # nibabel drops the frame axis of single-frame files (ncsnr)
    if len(shape) not in (3, 4) or shape[1:3] != (1, 1) or shape[0] not in (
        N_VERTICES_FSAVERAGE,
        N_VERTICES_HEMI,
    ):
        raise InputError(
            f"{path}: expected an fsaverage surface file of shape (163842, 1, 1, F), got {shape}"
        )
    data = image.dataobj[:N_VERTICES_HEMI, 0, 0, :] if len(shape) == 4 else (
        image.dataobj[:N_VERTICES_HEMI, 0, 0][:, None]
    )
    return np.asarray(data, dtype=np.float32).T


def read_session(
    root: str | Path,
    subject: int,
    session: int,
    zscore: bool = True,
    trials_per_session: int = TRIALS_PER_SESSION,
) -> np.ndarray:
    """Single-trial betas of one session on fsaverage5.

    Parameters
    ----------
    root : path
        NSD root (the folder holding ``nsddata_betas``).
    subject, session : int
        1-based subject (1..8) and session numbers.
    zscore : bool
        Z-score every vertex over the session's trials (the usual NSD practice, removing
        session-to-session drifts of scale).
    trials_per_session : int
        Frames expected in each file (750 in NSD).

    Returns
    -------
    numpy.ndarray
        ``(trials_per_session, 20484)`` float32, left hemisphere first.
    """
    folder = betas_dir(root, subject)
    hemis = [_read_fsaverage5(folder / f"{h}.betas_session{session:02d}.mgh") for h in HEMIS]
    betas_tv = np.concatenate(hemis, axis=1)
    if betas_tv.shape[0] != trials_per_session:
        raise InputError(
            f"session {session} of subject {subject} has {betas_tv.shape[0]} trials, expected "
            f"{trials_per_session}"
        )
    if zscore:
        std_v = betas_tv.std(axis=0)
        betas_tv = (betas_tv - betas_tv.mean(axis=0)) / np.where(std_v > 0, std_v, 1.0)
    return betas_tv.astype(np.float32)


def trial_images(stim_info: pd.DataFrame, subject: int) -> pd.Series:
    """The image shown on every trial of a subject.

    Parameters
    ----------
    stim_info : pandas.DataFrame
        ``nsd_stim_info_merged.csv`` (columns ``nsdId``, ``subject{s}_rep{0,1,2}``).
    subject : int
        1-based subject number.

    Returns
    -------
    pandas.Series
        ``nsdId`` (0-based) indexed by the 0-based global trial number, sorted by trial.
    """
    columns = [f"subject{subject}_rep{r}" for r in range(3)]
    missing = [c for c in ["nsdId", *columns] if c not in stim_info.columns]
    if missing:
        raise InputError(f"NSD stimulus table lacks columns {missing} (nsd_stim_info_merged.csv)")
    long = stim_info[["nsdId", *columns]].melt(id_vars="nsdId", value_name="trial")
    long = long[long["trial"] > 0]
    return pd.Series(
        long["nsdId"].to_numpy(np.int64), index=long["trial"].to_numpy(np.int64) - 1
    ).sort_index()


def read_subject(
    root: str | Path,
    subject: int,
    sessions: Sequence[int],
    stim_info: pd.DataFrame | None = None,
    zscore: bool = True,
    trials_per_session: int = TRIALS_PER_SESSION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Betas of the given sessions averaged over each image's repetitions.

    Parameters
    ----------
    root : path
        NSD root.
    subject : int
        1-based subject number.
    sessions : sequence of int
        1-based session numbers to read.
    stim_info : pandas.DataFrame or None
        The stimulus table; read from ``ROOT/nsddata/experiments/nsd/`` when ``None``.
    zscore : bool
        Z-score each session per vertex before averaging (see :func:`read_session`).
    trials_per_session : int
        Trials in each session file.

    Returns
    -------
    nsd_ids_m : numpy.ndarray
        ``(M,)`` int64, sorted 0-based image indices.
    betas_mv : numpy.ndarray
        ``(M, 20484)`` float32, mean response to each image.
    n_reps_m : numpy.ndarray
        ``(M,)`` int64, trials averaged per image.
    """
    if stim_info is None:
        path = Path(root) / STIM_INFO
        if not path.exists():
            raise InputError(f"NSD stimulus table not found: {path}")
        stim_info = pd.read_csv(path)
    if len(sessions) == 0:
        raise InputError("give at least one NSD session to read")
    trial_to_image = trial_images(stim_info, subject)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for session in sessions:
        betas_tv = read_session(root, subject, session, zscore, trials_per_session)
        first = (session - 1) * trials_per_session
        shown = trial_to_image.loc[first : first + trials_per_session - 1]
        for trial, nsd_id in shown.items():
            row_v = betas_tv[trial - first].astype(np.float64)
            if nsd_id in sums:
                sums[nsd_id] += row_v
                counts[nsd_id] += 1
            else:
                sums[nsd_id] = row_v
                counts[nsd_id] = 1
    if not sums:
        raise InputError(
            f"no trial of subject {subject} in sessions {list(sessions)} is in the stimulus table"
        )
    nsd_ids_m = np.array(sorted(sums), dtype=np.int64)
    n_reps_m = np.array([counts[i] for i in nsd_ids_m], dtype=np.int64)
    betas_mv = np.stack([sums[i] / counts[i] for i in nsd_ids_m]).astype(np.float32)
    return nsd_ids_m, betas_mv, n_reps_m


def noise_ceiling(
    ncsnr_v: np.ndarray, n_reps_m: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """NSD noise ceiling, in percent of variance, for responses averaged over repetitions.

    ``NC = 100 · ncsnr² / (ncsnr² + mean(1 / n))``, the NSD data manual's formula where images
    are averaged over different numbers of trials ``n`` (it reduces to ``1/n`` when all are
    equal). The mean runs over the images a score is computed on: give the held-out rows, since
    a model is scored on them and their repetition counts may differ from the training rows'.

    Parameters
    ----------
    ncsnr_v : numpy.ndarray
        Noise-ceiling SNR per vertex, shape ``(V,)``.
    n_reps_m : numpy.ndarray
        Trials averaged per image, shape ``(M,)``, all ≥ 1.
    rows : numpy.ndarray or None
        Indices or boolean mask (length ``M``) of the images the score is computed on (the
        test rows); None: all ``M``.

    Returns
    -------
    numpy.ndarray
        ``(V,)`` float64 in [0, 100].
    """
    n_reps_m = np.asarray(n_reps_m, dtype=np.float64)
    if rows is not None:
        n_reps_m = n_reps_m[np.asarray(rows)]
    if n_reps_m.size == 0 or np.any(n_reps_m < 1):
        raise InputError("every image must be averaged over at least one trial")
    signal_v = np.asarray(ncsnr_v, dtype=np.float64) ** 2
    return 100.0 * signal_v / (signal_v + np.mean(1.0 / n_reps_m))


def read_ncsnr(root: str | Path, subject: int) -> np.ndarray:
    """``(20484,)`` float32 noise-ceiling SNR of a subject on fsaverage5."""
    folder = betas_dir(root, subject)
    return np.concatenate([_read_fsaverage5(folder / f"{h}.ncsnr.mgh")[0] for h in HEMIS])
