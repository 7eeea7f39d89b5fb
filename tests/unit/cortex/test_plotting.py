"""Vertex maps drawn on the inflated surface."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neuromem.cortex.plotting import plot_surface_map
from neuromem.cortex.rois import load_roi_set
from neuromem.cortex.surface import mesh_coords
from neuromem.errors import InputError, UnknownNameError, VertexCountError


def test_plots_differ_between_maps_and_have_the_documented_size(tmp_path):
    y_v = mesh_coords("pial")[:, 1]
    front = plot_surface_map(y_v, tmp_path / "a" / "front.png", title="anterior-posterior")
    back = plot_surface_map(
        -y_v,
        tmp_path / "back.png",
        roi_set=load_roi_set("default"),
        rois=["V1", "lh_FFA"],
        symmetric=False,
        dpi=100,
    )
    assert front.stat().st_size > 10_000 and back.stat().st_size > 10_000
    with Image.open(front) as image:
        assert image.size == (1800, 1040)  # 9 x 5.2 inches at 200 dpi, as documented
        pixels_front = np.asarray(image.convert("RGB").resize((900, 520)), dtype=np.int16)
    with Image.open(back) as image:
        assert image.size == (900, 520)
        pixels_back = np.asarray(image.convert("RGB"), dtype=np.int16)
    # a map and its negation must not render alike: many pixels change colour
    assert np.mean(np.abs(pixels_front - pixels_back).sum(axis=2) > 60) > 0.05


def test_bad_plot_inputs(tmp_path):
    with pytest.raises(VertexCountError):
        plot_surface_map(np.zeros(10242), tmp_path / "x.png")
    with pytest.raises(InputError, match="no finite value"):
        plot_surface_map(np.full(20484, np.nan), tmp_path / "x.png")
    with pytest.raises(InputError, match="roi_set"):
        plot_surface_map(np.zeros(20484), tmp_path / "x.png", rois=["FFA"])
    with pytest.raises(UnknownNameError, match="FFA"):
        plot_surface_map(np.zeros(20484), tmp_path / "x.png", roi_set=load_roi_set(), rois=["FFa"])
    assert not (tmp_path / "x.png").exists()
