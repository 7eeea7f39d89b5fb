"""Fit a linear probe from CLIP features to vertex responses and score it on held-out images.

Pure numpy (himalaya does the ridge): features are standardised on the training rows, one
ridge per vertex is fitted with its alpha chosen by cross-validation, and the standardisation
is folded back into the weights, so the probe reads the raw features as
:class:`neuromem.encoders.clip_probe.ClipProbeEncoder` computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuromem.errors import InputError
from neuromem.probes.ridge import DEFAULT_ALPHAS, fit_ridge_cv, r2_columns


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe and its held-out scores.

    Attributes
    ----------
    weight_ve : numpy.ndarray
        ``(V, E)`` float32 head weights acting on raw features.
    bias_v : numpy.ndarray
        ``(V,)`` float32 head bias.
    alphas_v : numpy.ndarray
        ``(V,)`` ridge alpha chosen per target (on standardised features).
    cv_r2_v : numpy.ndarray
        ``(V,)`` cross-validated R² of the chosen alpha on the training rows.
    test_r2_v : numpy.ndarray
        ``(V,)`` R² on the held-out rows (NaN where the held-out target is constant).
    predictions_tv : numpy.ndarray
        ``(n_test, V)`` float32 held-out predictions.
    """

    weight_ve: np.ndarray
    bias_v: np.ndarray
    alphas_v: np.ndarray
    cv_r2_v: np.ndarray
    test_r2_v: np.ndarray
    predictions_tv: np.ndarray

    def predict(self, features_ne: np.ndarray) -> np.ndarray:
        """Responses ``(N, V)`` float32 to raw features ``(N, E)``."""
        return (np.asarray(features_ne, np.float32) @ self.weight_ve.T + self.bias_v).astype(
            np.float32
        )


def fit_probe(
    features_ne: np.ndarray,
    targets_nv: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    seed: int = 0,
    backend: str | None = None,
    n_targets_batch: int | None = None,
) -> ProbeFit:
    """Fit ridge probes on ``train_idx`` rows and score them on ``test_idx`` rows.

    Parameters
    ----------
    features_ne : numpy.ndarray
        ``(N, E)`` image features.
    targets_nv : numpy.ndarray
        ``(N, V)`` responses (finite).
    train_idx, test_idx : numpy.ndarray
        Disjoint row indices.
    alphas, n_folds, seed, backend, n_targets_batch
        See :func:`neuromem.probes.ridge.fit_ridge_cv`.

    Returns
    -------
    ProbeFit
    """
    features_ne = np.asarray(features_ne, np.float32)
    targets_nv = np.asarray(targets_nv, np.float32)
    if np.intersect1d(train_idx, test_idx).size:
        raise InputError("training and held-out rows overlap")
    train_ne = features_ne[train_idx]
    mean_e = train_ne.mean(axis=0)
    std_e = train_ne.std(axis=0)
    std_e = np.where(std_e > 0, std_e, 1.0).astype(np.float32)
    ridge = fit_ridge_cv(
        (train_ne - mean_e) / std_e,
        targets_nv[train_idx],
        alphas=alphas,
        n_folds=n_folds,
        seed=seed,
        backend=backend,
        n_targets_batch=n_targets_batch,
    )
    weight_ev = ridge.coef_dt / std_e[:, None]
    bias_v = ridge.intercept_t - mean_e @ weight_ev
    predictions_tv = (features_ne[test_idx] @ weight_ev + bias_v).astype(np.float32)
    return ProbeFit(
        weight_ve=np.ascontiguousarray(weight_ev.T, dtype=np.float32),
        bias_v=bias_v.astype(np.float32),
        alphas_v=ridge.alphas_t,
        cv_r2_v=ridge.cv_r2_t,
        test_r2_v=r2_columns(targets_nv[test_idx], predictions_tv),
        predictions_tv=predictions_tv,
    )
