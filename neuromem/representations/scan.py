"""One layer against its targets: memorability read-out, neural predictivity and CKA per ROI.

:func:`analyse_layer` and :func:`compare_layer` are pure functions of features already in
memory; ``neuromem layers`` runs them as one Ray task per layer (:mod:`neuromem.jobs.layers`).

Columns of one layer's record (``OUT/layers.parquet`` of ``neuromem layers``):

- ``memorability_rho_mean``, ``memorability_rho_std`` and ``memorability_rho_<split>``:
  Spearman ρ of PLS predictions on each held-out split (components chosen by 5-fold CV in the
  training rows), see :func:`neuromem.representations.readout.memorability_readout`;
- ``predictivity_<ROI>`` (Brain-Score raw score: mean over splits of the median over targets of
  the held-out Pearson r), ``predictivity_sd_<ROI>`` (its standard deviation over splits) and,
  for ROIs with a ceiling, ``predictivity_ceiled_<ROI>`` (``raw / ceiling``) and
  ``predictivity_ceiled_squared_<ROI>`` (``(raw / ceiling)²``), see
  :func:`neuromem.representations.readout.neural_predictivity`;
- ``cka_<ROI>``: linear CKA (debiased unless asked otherwise) between the layer and the ROI's
  targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from neuromem.errors import InputError
from neuromem.representations.cka import cka
from neuromem.representations.readout import (
    cross_validated_predictions,
    memorability_readout,
    neural_predictivity,
    unique_variance,
)
from neuromem.representations.targets import ScanTargets


def rows_of(ids: list[str], wanted: list[str]) -> np.ndarray:
    """Positions in ``ids`` of the ``wanted`` image ids.

    Raises
    ------
    InputError
        When some wanted image has no features.
    """
    position = {image_id: i for i, image_id in enumerate(ids)}
    missing = [w for w in wanted if w not in position]
    if missing:
        raise InputError(f"{len(missing)} images have no features (e.g. {missing[:3]})")
    return np.array([position[w] for w in wanted], dtype=np.int64)


def layer_record(layer: dict[str, Any]) -> dict[str, Any]:
    """The columns that identify a layer in the output tables."""
    return {"layer": layer["name"], "layer_index": layer["index"],
            "depth_fraction": layer["depth_fraction"], "n_features": layer["n_features"]}


def analyse_layer(ids: list[str], x_nf: np.ndarray, layer: dict[str, Any],
                  targets: ScanTargets, *, cka_kind: str = "debiased",
                  on_roi: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Memorability read-out and brain similarity of one layer (columns in the module docstring).

    Parameters
    ----------
    ids : list of str
        Image id of each row of ``x_nf``.
    x_nf : ndarray, shape (N, F)
        The layer's pooled features.
    layer : dict
        The layer's manifest record (``name``, ``index``, ``depth_fraction``, ``n_features``).
    targets : ScanTargets
    cka_kind : {"debiased", "biased"}
    on_roi : callable, optional
        Called with each ROI once it is done (progress).
    """
    x_nf = np.asarray(x_nf, dtype=np.float64)
    result = layer_record(layer)
    if targets.memorability is not None:
        readout = memorability_readout(x_nf[rows_of(ids, targets.memorability_ids)],
                                       targets.memorability, targets.splits, seed=targets.seed)
        result["memorability_rho_mean"] = readout.mean
        result["memorability_rho_std"] = readout.std
        for split, rho in readout.rho_per_split.items():
            result[f"memorability_rho_{split}"] = rho
    brain = targets.brain
    if brain is not None:
        x_brain = x_nf[rows_of(ids, brain.image_ids)]
        for roi, y_nt in brain.targets.items():
            ceiling = brain.ceilings.get(roi)
            score = neural_predictivity(
                x_brain, y_nt, stratify_n=brain.categories, seed=targets.seed,
                ceiling_t=None if ceiling is None else np.array([ceiling]))
            result[f"predictivity_{roi}"] = score.raw
            result[f"predictivity_sd_{roi}"] = score.error
            if score.normalised is not None:
                result[f"predictivity_ceiled_{roi}"] = score.normalised
                result[f"predictivity_ceiled_squared_{roi}"] = score.normalised_squared
            result[f"cka_{roi}"] = cka(x_brain, y_nt, cka_kind)
            if on_roi is not None:
                on_roi(roi)
    return result


def compare_layer(ids_a: list[str], x_a: np.ndarray, ids_b: list[str], x_b: np.ndarray,
                  layer: dict[str, Any], targets: ScanTargets, *,
                  cka_kind: str = "debiased",
                  on_roi: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Two networks at one layer: CKA between them and the unique variance of each per ROI.

    ``unique_a_<ROI>`` is the median over the ROI's targets of the partial correlation of the
    responses with network A's cross-validated PLS predictions, controlling for B's
    (:func:`neuromem.representations.readout.unique_variance`); ``unique_b_<ROI>`` the reverse.
    CKA is computed on the images both have. ``on_roi`` is called with each ROI once it is done
    (progress).
    """
    common = [i for i in ids_a if i in set(ids_b)]
    x_a = np.asarray(x_a, dtype=np.float64)[rows_of(ids_a, common)]
    x_b = np.asarray(x_b, dtype=np.float64)[rows_of(ids_b, common)]
    result = layer_record(layer)
    result["cka"] = cka(x_a, x_b, cka_kind)
    if targets.brain is not None:
        rows = rows_of(common, targets.brain.image_ids)
        for roi, y_nt in targets.brain.targets.items():
            pred_a = cross_validated_predictions(x_a[rows], y_nt, seed=targets.seed)
            pred_b = cross_validated_predictions(x_b[rows], y_nt, seed=targets.seed)
            result[f"unique_a_{roi}"] = float(np.nanmedian(unique_variance(y_nt, pred_a, pred_b)))
            result[f"unique_b_{roi}"] = float(np.nanmedian(unique_variance(y_nt, pred_b, pred_a)))
            if on_roi is not None:
                on_roi(roi)
    return result
