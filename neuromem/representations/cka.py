"""Linear centred kernel alignment (Kornblith et al. 2019), plain and debiased.

Plain linear CKA is biased upwards when features are many and stimuli few: two *independent*
Gaussian representations of 1,000 stimuli score about 0.10 at 64 features and 0.37 at 4,096.
Layers of one network differ in width, so plain CKA-versus-depth curves mix depth with width.
*Debiased* CKA replaces HSIC by its unbiased estimator (Song et al. 2012), as Kornblith's
reference code does with ``debiased=True``; its expectation for independent representations is
0 at every width (single values can be slightly negative).
"""

from __future__ import annotations

import numpy as np

#: CKA estimators: ``"debiased"`` (unbiased HSIC, the default) or ``"biased"`` (plain).
CKA_KINDS = ("debiased", "biased")


def _centred_pair(x_nf: np.ndarray, y_ng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x_nf, dtype=np.float64)
    y = np.asarray(y_ng, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"CKA needs two 2-D arrays with the same number of rows; got {x.shape} and {y.shape}"
        )
    return x - x.mean(axis=0), y - y.mean(axis=0)


def linear_cka(x_nf: np.ndarray, y_ng: np.ndarray) -> float:
    """Plain (biased) linear CKA between two representations of the same ``N`` stimuli.

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
    x, y = _centred_pair(x_nf, y_ng)
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


def _scaled_unbiased_hsic(x: np.ndarray, y: np.ndarray, rows_x: np.ndarray,
                          rows_y: np.ndarray) -> float:
    """``n(n-3) · HSIC₁(XXᵀ, YYᵀ)`` of column-centred ``x``, ``y`` (see :func:`debiased_linear_cka`).

    ``rows_x``, ``rows_y`` are the squared row norms (the Gram diagonals).
    """
    n = x.shape[0]
    cross = np.linalg.norm(y.T @ x) ** 2 if max(x.shape[1], y.shape[1]) < n else float(
        np.sum((x @ x.T) * (y @ y.T)))
    return float(cross - n / (n - 2) * rows_x @ rows_y
                 + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2)))


def debiased_linear_cka(x_nf: np.ndarray, y_ng: np.ndarray) -> float:
    """Debiased linear CKA: the unbiased HSIC estimator of Song et al. (2012) in CKA's ratio.

    With ``K = XXᵀ``, ``L = YYᵀ`` and ``K̃``, ``L̃`` the same with a zero diagonal,

    ``HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) − 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))``

    and CKA is ``HSIC₁(K, L) / sqrt(HSIC₁(K, K) HSIC₁(L, L))``, as Kornblith's reference code
    computes with ``debiased=True``. Columns are centred first (the estimator does not depend
    on it), which turns the sums into feature-space products when ``N`` exceeds the widths.

    Parameters
    ----------
    x_nf : ndarray, shape (N, F)
    y_ng : ndarray, shape (N, G)
        Two representations of the same ``N ≥ 4`` stimuli.

    Returns
    -------
    float
        About 0 for independent representations at any width, 1 for ``Y = X Q c`` with ``Q``
        orthogonal; NaN when ``N < 4`` or an estimated self-HSIC is not positive.
    """
    x, y = _centred_pair(x_nf, y_ng)
    if x.shape[0] < 4:
        return float("nan")
    rows_x = np.einsum("ij,ij->i", x, x)
    rows_y = np.einsum("ij,ij->i", y, y)
    xy = _scaled_unbiased_hsic(x, y, rows_x, rows_y)
    xx = _scaled_unbiased_hsic(x, x, rows_x, rows_x)
    yy = _scaled_unbiased_hsic(y, y, rows_y, rows_y)
    if not (xx > 0 and yy > 0):
        return float("nan")
    return float(xy / np.sqrt(xx * yy))


def cka(x_nf: np.ndarray, y_ng: np.ndarray, kind: str = "debiased") -> float:
    """Linear CKA of the given kind (:data:`CKA_KINDS`)."""
    if kind == "debiased":
        return debiased_linear_cka(x_nf, y_ng)
    if kind == "biased":
        return linear_cka(x_nf, y_ng)
    raise ValueError(f"CKA kind must be one of {', '.join(CKA_KINDS)}; got {kind!r}")
