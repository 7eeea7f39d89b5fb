"""The cortical surface neuromem works on: fsaverage5 geometry, atlases, ROIs, ROI means, plots.

Every vertex array has 20,484 values, the left hemisphere in ``0..10241`` and the right one in
``10242..20483`` (:data:`N_VERTICES`, :data:`N_VERTICES_HEMI`). Importing this package loads
only numpy; nilearn, nibabel and matplotlib are imported when first needed.
"""

from neuromem.cortex.atlas import Atlas, load_atlas, load_glasser
from neuromem.cortex.plotting import plot_surface_map
from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import RoiSet, build_roi_set, load_roi_set
from neuromem.cortex.surface import (
    HEMI_SLICES,
    N_VERTICES,
    N_VERTICES_HEMI,
    load_mesh,
    sphere_coords,
    sulcal_depth,
)

__all__ = [
    "HEMI_SLICES",
    "N_VERTICES",
    "N_VERTICES_HEMI",
    "Atlas",
    "RoiReducer",
    "RoiSet",
    "build_roi_set",
    "load_atlas",
    "load_glasser",
    "load_mesh",
    "load_roi_set",
    "plot_surface_map",
    "sphere_coords",
    "sulcal_depth",
]
