"""The held-out R² report of a fitted probe (``r2.json``) and its surface maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.probes.fit import ProbeFit
from neuromem.probes.ridge import r2_columns


def _finite_or_none(values) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _nanmedian(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def r2_report(
    fit: ProbeFit,
    targets_test_tv: np.ndarray,
    roi_spec: str,
    ceiling_v: np.ndarray | None,
) -> dict[str, Any]:
    """Per-vertex and per-ROI held-out scores as a JSON-ready dict."""
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set

    roi_set = load_roi_set(roi_spec)
    reducer = RoiReducer(roi_set)
    roi_r2 = r2_columns(reducer(targets_test_tv), reducer(fit.predictions_tv))
    normalised_v = None
    if ceiling_v is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised_v = np.where(ceiling_v > 0, 100.0 * fit.test_r2_v / ceiling_v, np.nan)
    rois = []
    for r, name in enumerate(reducer.names):
        indices = roi_set.indices[name]
        rois.append({
            "roi": name,
            "n_vertices": int(indices.size),
            "r2": _finite_or_none([roi_r2[r]])[0],
            "mean_vertex_r2": _nanmean(fit.test_r2_v[indices]),
            "mean_noise_ceiling": None if ceiling_v is None else _nanmean(ceiling_v[indices]),
            "mean_vertex_r2_normalised": (
                None if normalised_v is None else _nanmean(normalised_v[indices])
            ),
        })
    return {
        "summary": {
            "median_vertex_r2": _nanmedian(fit.test_r2_v),
            "mean_vertex_r2": _nanmean(fit.test_r2_v),
            "median_alpha": float(np.median(fit.alphas_v)),
            "median_vertex_r2_normalised": (
                None if normalised_v is None else _nanmedian(normalised_v)
            ),
        },
        "rois": rois,
        "vertices": {
            "r2": _finite_or_none(fit.test_r2_v),
            "cv_r2": _finite_or_none(fit.cv_r2_v),
            "alpha": _finite_or_none(fit.alphas_v),
            "noise_ceiling": None if ceiling_v is None else _finite_or_none(ceiling_v),
            "r2_normalised": None if normalised_v is None else _finite_or_none(normalised_v),
        },
        "roi_set": roi_spec,
    }


def plot_maps(report: dict[str, Any], out: Path, roi_spec: str) -> list[Path]:
    """Surface maps of the held-out R² (and of its ceiling-normalised version)."""
    from neuromem.cortex.plotting import plot_surface_map
    from neuromem.cortex.rois import load_roi_set

    roi_set = load_roi_set(roi_spec)
    maps = [("r2", "r2_vertices.png", "held-out R²"),
            ("r2_normalised", "r2_normalised.png", "held-out R², % of noise ceiling")]
    written = []
    for key, name, title in maps:
        values = report["vertices"][key]
        if values is None:
            continue
        values_v = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if not np.isfinite(values_v).any():
            continue
        written.append(plot_surface_map(
            values_v, out / name, roi_set=roi_set, title=title, cmap="inferno", symmetric=False,
        ))
    return written
