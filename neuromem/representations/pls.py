"""Partial least squares regression in torch (PLS2, NIPALS with exact first singular vectors).

Layer scans fit thousands of PLS models; this implementation runs batched on a GPU and gives the
same predictions as ``sklearn.cross_decomposition.PLSRegression(scale=False)`` (whose power
iterations converge to the exact singular vectors used here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PLSModel:
    """A fitted PLS regression.

    Attributes
    ----------
    x_mean : Tensor, shape (F,)
    y_mean : Tensor, shape (T,)
    coef_ft : Tensor, shape (F, T)
        Regression coefficients on centred ``X``.
    n_components : int
    """

    x_mean: torch.Tensor
    y_mean: torch.Tensor
    coef_ft: torch.Tensor
    n_components: int

    def predict(self, x_nf: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Predictions ``(N, T)`` for new rows ``x_nf`` ``(N, F)``."""
        x = torch.as_tensor(x_nf, dtype=self.coef_ft.dtype, device=self.coef_ft.device)
        return (x - self.x_mean) @ self.coef_ft + self.y_mean


def fit_pls(
    x_nf: np.ndarray | torch.Tensor,
    y_nt: np.ndarray | torch.Tensor,
    n_components: int,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> PLSModel:
    """Fit PLS regression (mode A, regression deflation, no scaling).

    Parameters
    ----------
    x_nf : array, shape (N, F)
        Predictors (layer features).
    y_nt : array, shape (N,) or (N, T)
        Targets (memorability, or neural responses).
    n_components : int
        Number of latent components; must not exceed ``min(N - 1, F)``.
    device, dtype
        Where to compute (default: the input's device, or CPU) and in which precision.

    Returns
    -------
    PLSModel
    """
    x = torch.as_tensor(x_nf, dtype=dtype, device=device)
    y = torch.as_tensor(y_nt, dtype=dtype, device=x.device)
    if y.ndim == 1:
        y = y[:, None]
    n, n_features = x.shape
    max_components = min(n - 1, n_features)
    if not 1 <= n_components <= max_components:
        raise ValueError(
            f"n_components must be in 1..{max_components} (min(N - 1, F) for N={n}, F={n_features}); "
            f"got {n_components}"
        )
    x_mean, y_mean = x.mean(0), y.mean(0)
    xk, yk = x - x_mean, y - y_mean
    weights, x_loadings, y_loadings = [], [], []
    eps = torch.finfo(dtype).eps
    for _ in range(n_components):
        cross_ft = xk.T @ yk
        if cross_ft.shape[1] == 1:
            w = cross_ft[:, 0]
        else:  # first left singular vector of X'Y via the small T x T eigenproblem
            _, vecs = torch.linalg.eigh(cross_ft.T @ cross_ft)
            w = cross_ft @ vecs[:, -1]
        w = w / torch.clamp(torch.linalg.vector_norm(w), min=eps)
        t = xk @ w
        tt = torch.clamp(t @ t, min=eps)
        p = xk.T @ t / tt
        q = yk.T @ t / tt
        xk = xk - torch.outer(t, p)
        yk = yk - torch.outer(t, q)
        weights.append(w)
        x_loadings.append(p)
        y_loadings.append(q)
    w_fk = torch.stack(weights, 1)
    p_fk = torch.stack(x_loadings, 1)
    q_tk = torch.stack(y_loadings, 1)
    rotations_fk = w_fk @ torch.linalg.pinv(p_fk.T @ w_fk)
    return PLSModel(x_mean, y_mean, rotations_fk @ q_tk.T, n_components)
