"""Vertex maps on the inflated fsaverage5 surface, saved as PNG figures for reports and papers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuromem.cortex.rois import RoiSet
from neuromem.cortex.surface import (
    HEMI_SLICES,
    HEMIS,
    N_VERTICES,
    check_n_vertices,
    load_mesh,
    sulcal_depth,
)
from neuromem.errors import InputError

VIEWS = ("lateral", "medial", "ventral")
"""Views drawn for each hemisphere, left to right."""

FIGSIZE_IN = (9.0, 5.2)
"""Figure size in inches (width, height); at ``dpi=200`` the PNG is 1800 x 1040 pixels."""

_OUTLINE_COLORS = (
    "black", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink",
    "tab:olive", "tab:cyan", "gold", "navy", "lime", "magenta", "teal",
)  # fmt: skip


def plot_surface_map(
    values_v: np.ndarray,
    out_png: str | Path,
    *,
    roi_set: RoiSet | None = None,
    rois: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "RdBu_r",
    vmax: float | None = None,
    symmetric: bool = True,
    dpi: int = 200,
) -> Path:
    """Draw a vertex map on the inflated fsaverage5 surface and save it as a PNG.

    Six panels: lateral, medial and ventral views (columns) of the left and right hemisphere
    (rows), sulcal depth in grey underneath, one colour bar, optional ROI outlines.

    Parameters
    ----------
    values_v : ndarray of shape (20484,)
        One value per fsaverage5 vertex (left hemisphere first). NaN vertices show the
        background.
    out_png : str or Path
        Output file; parent folders are created.
    roi_set : RoiSet, optional
        Draw outlines of its ROIs.
    rois : sequence of str, optional
        Which ROIs of ``roi_set`` to outline; default: every ROI defined on both hemispheres.
    title : str, optional
        Figure title.
    cmap : str
        Matplotlib colour map.
    vmax : float, optional
        Top of the colour scale; default: the largest finite absolute value (``symmetric``)
        or the largest finite value.
    symmetric : bool
        Colour scale from ``-vmax`` to ``vmax`` (for signed maps such as correlations);
        otherwise from the smallest finite value to ``vmax``.
    dpi : int
        Resolution; the figure is :data:`FIGSIZE_IN` inches.

    Returns
    -------
    Path
        ``out_png``.
    """
    values_v = np.asarray(values_v, dtype=np.float64)
    check_n_vertices(values_v, name="values_v")
    if values_v.ndim != 1:
        raise InputError(f"values_v must be one map of shape (20484,), got {values_v.shape}")
    finite_v = values_v[np.isfinite(values_v)]
    if finite_v.size == 0:
        raise InputError("values_v has no finite value to draw")
    vmin, vmax = _colour_range(finite_v, vmax, symmetric)
    if rois is not None and roi_set is None:
        raise InputError("rois names ROIs to outline: give the roi_set they belong to as well")
    outlines = _outline_maps(roi_set, rois) if roi_set is not None else None
    depth_v = sulcal_depth()

    from matplotlib import cm, lines
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from nilearn import plotting

    # a bare Agg figure: no pyplot state, the caller's matplotlib backend is left alone
    fig = Figure(figsize=FIGSIZE_IN, dpi=dpi)
    FigureCanvasAgg(fig)
    for row, hemi in enumerate(HEMIS):
        inflated = load_mesh("inflated", hemi)
        for col, view in enumerate(VIEWS):
            # nilearn centres the coordinates in place: give it a copy, not the cache
            mesh = [inflated.coordinates.copy(), inflated.faces]
            ax = fig.add_axes((0.01 + col * 0.29, 0.5 - row * 0.42, 0.3, 0.42), projection="3d")
            plotting.plot_surf(
                mesh,
                surf_map=values_v[HEMI_SLICES[hemi]],
                bg_map=depth_v[HEMI_SLICES[hemi]],
                hemi=hemi,
                view=view,
                engine="matplotlib",
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                colorbar=False,
                axes=ax,
                figure=fig,
            )
            if outlines is not None:
                roi_map_v, labels, outline_colors = outlines
                hemi_map = roi_map_v[HEMI_SLICES[hemi]]
                present = [k for k in range(1, len(labels) + 1) if np.any(hemi_map == k)]
                if present:
                    plotting.plot_surf_contours(
                        mesh,
                        hemi_map,
                        hemi=hemi,
                        levels=present,
                        labels=[labels[k - 1] for k in present],
                        colors=[outline_colors[k - 1] for k in present],
                        axes=ax,
                        figure=fig,
                    )
            ax.set_box_aspect(None, zoom=1.45)  # nilearn leaves wide margins in 3D axes
            ax.text2D(0.5, 0.95, f"{hemi} {view}", transform=ax.transAxes, ha="center", fontsize=8)
    cax = fig.add_axes((0.915, 0.2, 0.015, 0.6))
    mappable = cm.ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    fig.colorbar(mappable, cax=cax).ax.tick_params(labelsize=7)
    if outlines is not None:
        handles = [
            lines.Line2D([], [], color=c, lw=1.5, label=n)
            for n, c in zip(outlines[1], outlines[2], strict=True)
        ]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 8),
            fontsize=6,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=10, y=0.985)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    return out_png


def _colour_range(finite_v: np.ndarray, vmax: float | None, symmetric: bool) -> tuple[float, float]:
    if symmetric:
        top = float(np.max(np.abs(finite_v))) if vmax is None else float(vmax)
        top = top if top > 0 else 1.0
        return -top, top
    low = float(finite_v.min())
    top = float(finite_v.max()) if vmax is None else float(vmax)
    return low, top if top > low else low + 1.0


def _outline_maps(roi_set: RoiSet, rois: Sequence[str] | None):
    """A vertex map of ROI numbers (1..k; later ROIs win on overlaps), names and colours."""
    if rois is None:
        rois = [roi for roi in roi_set.names if roi_set.hemisphere(roi) == "both"]
    rois = roi_set.check_names(list(rois))
    roi_map_v = np.zeros(N_VERTICES, dtype=np.int32)
    for k, roi in enumerate(rois, 1):
        roi_map_v[roi_set.indices[roi]] = k
    colors = [_OUTLINE_COLORS[k % len(_OUTLINE_COLORS)] for k in range(len(rois))]
    return roi_map_v, rois, colors
