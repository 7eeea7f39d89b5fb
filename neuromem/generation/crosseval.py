"""Cross-evaluation of brain guidance: normalisation, specificity ranks and the heatmap.

For every target ROI ``t`` images are generated under guidance that maximises ``t`` as predicted
by the guiding encoder A; encoder B measures every target ROI ``m`` on them. ``raw[t, m]`` is B's
mean response of ROI ``m`` over the images made for target ``t``.

Normalisation (documented choice): ROIs differ in baseline and spread, so each measured ROI
(column) is z-scored across targets, ``z[t, m] = (raw[t, m] − mean_t raw[:, m]) / std_t raw[:, m]``
(population std; 0 where a column is constant). ``z[t, m] > 0`` means target ``t``'s images
drive ROI ``m`` more than the average target's do. The diagonal's rank in its row
(``1`` = target ROI ``t`` is the ROI that ``t``'s images raised most, in z units; chance
``(T + 1) / 2``) tests specificity; its rank in its column (``1`` = no other target's images
drive ROI ``t`` more) tests whether e.g. PPA-targeted images score highest on PPA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuromem.errors import InputError

#: How ``cross_eval.json`` states the normalisation.
NORMALISATION = "each measured ROI (column) z-scored across targets, population std"


def zscore_columns(raw_tm: np.ndarray) -> np.ndarray:
    """Z-score each column across rows (population std); constant columns give 0."""
    raw_tm = np.asarray(raw_tm, dtype=np.float64)
    std_m = raw_tm.std(axis=0)
    centred_tm = raw_tm - raw_tm.mean(axis=0)
    return np.divide(centred_tm, std_m, out=np.zeros_like(centred_tm), where=std_m > 0)


def diagonal_ranks(matrix_tt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each diagonal entry within its row and within its column (1 = largest).

    Ties count in the diagonal's favour (rank = 1 + number of strictly larger entries).

    Returns
    -------
    row_rank_t, column_rank_t : numpy.ndarray of int
    """
    matrix_tt = np.asarray(matrix_tt)
    if matrix_tt.ndim != 2 or matrix_tt.shape[0] != matrix_tt.shape[1]:
        raise InputError(f"expected a square target × measured matrix, got {matrix_tt.shape}")
    diag_t = np.diag(matrix_tt)
    row_rank_t = 1 + (matrix_tt > diag_t[:, None]).sum(axis=1)
    column_rank_t = 1 + (matrix_tt > diag_t[None, :]).sum(axis=0)
    return row_rank_t, column_rank_t


def summarise(raw_tm: np.ndarray, baseline_m: np.ndarray, targets: list[str]) -> dict:
    """Matrices and ranks of one encoder's measurements, JSON-ready."""
    z_tm = zscore_columns(raw_tm)
    row_rank_t, column_rank_t = diagonal_ranks(z_tm)
    n_targets = len(targets)
    return {
        "raw": raw_tm.tolist(),
        "gain_over_unguided": (raw_tm - baseline_m[None, :]).tolist(),
        "z": z_tm.tolist(),
        "unguided": baseline_m.tolist(),
        "diagonal_rank_in_row": dict(zip(targets, map(int, row_rank_t), strict=True)),
        "diagonal_rank_in_column": dict(zip(targets, map(int, column_rank_t), strict=True)),
        "mean_diagonal_rank_in_row": float(row_rank_t.mean()),
        "chance_rank": (n_targets + 1) / 2,
    }


def plot_heatmap(z_tm: np.ndarray, row_rank_t: np.ndarray, targets: list[str], title: str,
                 path: Path) -> None:
    """Heatmap of the z-scored matrix, diagonal cells outlined and labelled with their row rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.55 * len(targets)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    limit = max(1e-9, float(np.abs(z_tm).max()))
    image = ax.imshow(z_tm, cmap="RdBu_r", vmin=-limit, vmax=limit)
    labels = [t.removeprefix("roi_") for t in targets]
    ax.set_xticks(range(len(targets)), labels, rotation=90)
    ax.set_yticks(range(len(targets)), labels)
    ax.set_xlabel("measured ROI")
    ax.set_ylabel("target ROI (guided)")
    for i, rank in enumerate(row_rank_t):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        colour = "white" if abs(z_tm[i, i]) > 0.6 * limit else "black"
        ax.text(i, i, f"#{rank}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label="z across targets")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
