"""Ridge regression from image features to many targets, one regularisation per target.

The fit is himalaya's ``RidgeCV`` (SVD solver, ``local_alpha=True``): for every target the
alpha with the best cross-validated R² is chosen from a grid, then the model is refit on all
training rows. On a CUDA machine himalaya's ``torch_cuda`` backend does the work on the GPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from neuromem.errors import InputError

DEFAULT_ALPHAS = np.logspace(-2, 6, 17)


@dataclass(frozen=True)
class RidgeFit:
    """A fitted multi-target ridge model.

    Attributes
    ----------
    coef_dt : numpy.ndarray
        Weights, shape ``(D, T)``, float32.
    intercept_t : numpy.ndarray
        Intercepts, shape ``(T,)``, float32.
    alphas_t : numpy.ndarray
        Chosen regularisation per target, shape ``(T,)``.
    cv_r2_t : numpy.ndarray
        Cross-validated R² of the chosen alpha, averaged over folds, shape ``(T,)``.
    """

    coef_dt: np.ndarray
    intercept_t: np.ndarray
    alphas_t: np.ndarray
    cv_r2_t: np.ndarray

    def predict(self, features_nd: np.ndarray) -> np.ndarray:
        """Predictions ``(N, T)`` float32 for features ``(N, D)``."""
        return (np.asarray(features_nd, np.float32) @ self.coef_dt + self.intercept_t).astype(
            np.float32
        )


def default_backend() -> str:
    """``"torch_cuda"`` when a CUDA device is visible, else ``"numpy"``."""
    import torch

    return "torch_cuda" if torch.cuda.is_available() else "numpy"


@contextmanager
def _himalaya_backend(name: str):
    from himalaya.backend import get_backend, set_backend

    previous = get_backend()
    backend = set_backend(name, on_error="raise")
    try:
        yield backend
    finally:
        set_backend(previous)


def fit_ridge_cv(
    features_nd: np.ndarray,
    targets_nt: np.ndarray,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    seed: int = 0,
    backend: str | None = None,
    n_targets_batch: int | None = None,
) -> RidgeFit:
    """Fit one ridge regression per target column, alpha chosen per target by K-fold CV.

    Parameters
    ----------
    features_nd : numpy.ndarray
        Features, shape ``(N, D)``.
    targets_nt : numpy.ndarray
        Targets, shape ``(N, T)``; no NaN.
    alphas : numpy.ndarray
        Grid of regularisation strengths, shape ``(A,)``, all positive.
    n_folds : int
        Number of cross-validation folds (shuffled with ``seed``).
    seed : int
        Seed of the fold assignment.
    backend : str or None
        himalaya backend (``"numpy"``, ``"torch"``, ``"torch_cuda"``); ``None`` picks
        :func:`default_backend`.
    n_targets_batch : int or None
        Targets solved at once (bounds memory); ``None`` solves all together.

    Returns
    -------
    RidgeFit
    """
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score
    from sklearn.model_selection import KFold

    features_nd = np.asarray(features_nd, dtype=np.float32)
    targets_nt = np.asarray(targets_nt, dtype=np.float32)
    alphas = np.asarray(alphas, dtype=np.float64)
    if features_nd.ndim != 2 or targets_nt.ndim != 2:
        raise InputError(
            f"expected features (N, D) and targets (N, T), got {features_nd.shape} and "
            f"{targets_nt.shape}"
        )
    if features_nd.shape[0] != targets_nt.shape[0]:
        raise InputError(
            f"features have {features_nd.shape[0]} rows but targets have {targets_nt.shape[0]}"
        )
    if features_nd.shape[0] < 2 * n_folds:
        raise InputError(
            f"{n_folds}-fold cross-validation needs at least {2 * n_folds} rows, got "
            f"{features_nd.shape[0]}"
        )
    if not np.all(np.isfinite(targets_nt)) or not np.all(np.isfinite(features_nd)):
        raise InputError("features and targets must be finite (no NaN/inf)")
    if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0):
        raise InputError(f"alphas must be a non-empty list of positive numbers, got {alphas}")

    with _himalaya_backend(backend or default_backend()) as bk:
        model = RidgeCV(
            alphas=alphas,
            fit_intercept=True,
            solver="svd",
            solver_params=dict(
                local_alpha=True,
                score_func=r2_score,
                n_targets_batch=n_targets_batch,
                n_targets_batch_refit=n_targets_batch,
                warn=False,
            ),
            cv=KFold(n_splits=n_folds, shuffle=True, random_state=seed),
        )
        model.fit(features_nd, targets_nt)
        return RidgeFit(
            coef_dt=np.asarray(bk.to_numpy(model.coef_), np.float32),
            intercept_t=np.asarray(bk.to_numpy(model.intercept_), np.float32),
            alphas_t=np.asarray(bk.to_numpy(model.best_alphas_), np.float64),
            cv_r2_t=np.asarray(bk.to_numpy(model.cv_scores_), np.float64),
        )


def r2_columns(targets_nt: np.ndarray, predictions_nt: np.ndarray) -> np.ndarray:
    """Coefficient of determination of every column, ``1 - SS_res / SS_tot``.

    Parameters
    ----------
    targets_nt, predictions_nt : numpy.ndarray
        Shape ``(N, T)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(T,)`` float64; NaN for a constant target column.
    """
    targets_nt = np.asarray(targets_nt, np.float64)
    predictions_nt = np.asarray(predictions_nt, np.float64)
    ss_res_t = np.sum((targets_nt - predictions_nt) ** 2, axis=0)
    ss_tot_t = np.sum((targets_nt - targets_nt.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot_t > 0, 1.0 - ss_res_t / ss_tot_t, np.nan)


def train_test_indices(
    n_rows: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n_rows)`` into sorted train and held-out indices."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n_rows * test_fraction))
    if n_test < 2 or n_rows - n_test < 2:
        raise InputError(
            f"cannot hold out {test_fraction:.0%} of {n_rows} rows: both parts need 2 rows or more"
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
