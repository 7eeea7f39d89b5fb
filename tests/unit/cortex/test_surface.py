"""fsaverage5 geometry read offline from nilearn's shipped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuromem.cortex import surface
from neuromem.errors import VertexCountError


def test_vertex_constants_and_hemisphere_slices():
    assert surface.N_VERTICES == 20484 and surface.N_VERTICES_HEMI == 10242
    index_v = np.arange(surface.N_VERTICES)
    left, right = surface.split_hemis(index_v)
    assert left[0] == 0 and left[-1] == 10241 and right[0] == 10242 and right[-1] == 20483
    assert np.array_equal(index_v[surface.HEMI_SLICES["right"]], right)


@pytest.mark.parametrize("kind", surface.MESH_KINDS)
def test_meshes_have_fsaverage5_shape(kind):
    for hemi in surface.HEMIS:
        mesh = surface.load_mesh(kind, hemi)
        assert mesh.coordinates.shape == (10242, 3)
        assert mesh.faces.shape == (20480, 3)
        assert mesh.faces.min() == 0 and mesh.faces.max() == 10241
        assert not mesh.coordinates.flags.writeable  # the cache cannot be changed by callers


def test_pial_hemispheres_lie_on_their_side():
    coords_v3 = surface.mesh_coords("pial")
    assert coords_v3.shape == (20484, 3)
    assert np.mean(coords_v3[:10242, 0] < 0) > 0.99  # left hemisphere: x < 0 (RAS)
    assert np.mean(coords_v3[10242:, 0] > 0) > 0.99


def test_sphere_coords_are_two_unit_spheres_of_radius_100():
    sphere_v3 = surface.sphere_coords()
    assert sphere_v3.shape == (20484, 3)
    np.testing.assert_allclose(np.linalg.norm(sphere_v3, axis=1), 100.0, atol=0.05)
    # each hemisphere's sphere is centred on the origin (icosahedral vertices are symmetric)
    np.testing.assert_allclose(sphere_v3[:10242].mean(0), 0.0, atol=0.5)
    np.testing.assert_allclose(sphere_v3[10242:].mean(0), 0.0, atol=0.5)
    assert surface.sphere_coords() is sphere_v3  # cached


def _nilearn_gifti(name: str) -> np.ndarray:
    """Read one of nilearn's shipped fsaverage5 GIfTI files directly with nibabel."""
    import nibabel as nib
    import nilearn

    return (
        nib.load(Path(nilearn.__file__).parent / "datasets/data/fsaverage5" / name).darrays[0].data
    )


def test_sulcal_depth_and_sphere_equal_nibabel_reading_of_nilearn_files():
    depth_v = surface.sulcal_depth()
    assert depth_v.shape == (20484,) and np.all(np.isfinite(depth_v))
    expected_v = np.concatenate(
        [_nilearn_gifti("sulc_left.gii.gz"), _nilearn_gifti("sulc_right.gii.gz")]
    )
    np.testing.assert_array_equal(depth_v, expected_v)
    sphere_v3 = np.concatenate(
        [_nilearn_gifti("sphere_left.gii.gz"), _nilearn_gifti("sphere_right.gii.gz")]
    )
    np.testing.assert_array_equal(surface.sphere_coords(), sphere_v3)
    np.testing.assert_array_equal(
        surface.mesh_coords("white")[10242:], _nilearn_gifti("white_right.gii.gz")
    )


def test_wrong_vertex_count_raises():
    with pytest.raises(VertexCountError, match="20484"):
        surface.check_n_vertices(np.zeros((2, 10242)), name="responses")
    with pytest.raises(VertexCountError):
        surface.split_hemis(np.zeros(163842))
