"""Linear centred kernel alignment (Kornblith et al. 2019)."""

from __future__ import annotations

import numpy as np


def linear_cka(x_nf: np.ndarray, y_ng: np.ndarray) -> float:
    """Linear CKA between two representations of the same ``N`` stimuli.

    Parameters
    ----------
    x_nf : ndarray, shape (N, F)
        First representation (e.g. one layer's pooled activations).
    y_ng : ndarray, shape (N, G)
        Second representation; ``G`` may differ from ``F``.

    Returns
    -------
    float
        ``‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F)`` with column-centred ``Xᶜ, Yᶜ``; in [0, 1],
        invariant to orthogonal transforms and isotropic scaling of either input.
        NaN when either representation is constant.

    Notes
    -----
    Computed in float64 with the feature-space Gram matrices when ``N`` exceeds the feature
    counts, and with the ``N × N`` stimulus Gram matrices otherwise (the two are equal).
    """
    x = np.asarray(x_nf, dtype=np.float64)
    y = np.asarray(y_ng, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs two 2-D arrays with the same number of rows; got {x.shape} and {y.shape}"
        )
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = x.shape[0]
    if max(x.shape[1], y.shape[1]) < n:
        cross = np.linalg.norm(y.T @ x) ** 2
        norm_x = np.linalg.norm(x.T @ x)
        norm_y = np.linalg.norm(y.T @ y)
    else:
        gram_x = x @ x.T
        gram_y = y @ y.T
        cross = float(np.sum(gram_x * gram_y))
        norm_x = np.linalg.norm(gram_x)
        norm_y = np.linalg.norm(gram_y)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    return float(cross / (norm_x * norm_y))
