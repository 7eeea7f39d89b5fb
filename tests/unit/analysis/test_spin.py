"""Spin tests on the fsaverage5 sphere: geometry of the rotations, power and calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from neuromem.analysis import spin_indices, spin_test
from neuromem.cortex.surface import N_VERTICES_HEMI, load_mesh, sphere_coords
from neuromem.errors import InputError

H = N_VERTICES_HEMI


@pytest.fixture(scope="module")
def sphere():
    return np.asarray(sphere_coords(), dtype=np.float64)


@pytest.fixture(scope="module")
def spins(sphere):
    return spin_indices(sphere, 100, seed=0)


def _smooth_random_map(sphere, rng, n_bumps=40, width=25.0):
    """A rotation-invariant random field: Gaussian bumps at random places with random signs."""
    map_v = np.zeros(len(sphere))
    for lo in (0, H):
        coords = sphere[lo : lo + H]
        centres = rng.standard_normal((n_bumps, 3))
        centres *= 100 / np.linalg.norm(centres, axis=1, keepdims=True)
        d2 = ((coords[:, None, :] - centres[None]) ** 2).sum(-1)
        map_v[lo : lo + H] = (np.exp(-d2 / (2 * width**2)) * rng.standard_normal(n_bumps)).sum(1)
    return map_v


def test_rotations_keep_neighbours_together(sphere, spins):
    """Mesh neighbours take values from nearby vertices, unlike a random permutation."""
    faces = load_mesh("sphere", "left").faces
    a, b = faces[:, 0], faces[:, 1]
    edge = np.median(np.linalg.norm(sphere[a] - sphere[b], axis=1))
    src = spins[:5, :H]
    spun = np.median(np.linalg.norm(sphere[src[:, a]] - sphere[src[:, b]], axis=-1))
    shuffled = np.random.default_rng(0).permutation(H)
    random = np.median(np.linalg.norm(sphere[shuffled[a]] - sphere[shuffled[b]], axis=1))
    assert spun < 2 * edge < random / 10
    # every target gets a source of its own hemisphere; sources cover most vertices
    assert spins[:, :H].max() < H and spins[:, H:].min() >= H
    assert np.mean([np.unique(s[:H]).size for s in spins[:5]]) > 0.85 * H


def test_right_hemisphere_spins_as_the_mirror_of_the_left(sphere):
    mirrored = sphere.copy()
    mirrored[H:] = sphere[:H] * [-1.0, 1.0, 1.0]
    idx = spin_indices(mirrored, 4, seed=3)
    np.testing.assert_array_equal(idx[:, H:] - H, idx[:, :H])
    assert not np.array_equal(idx[0], idx[1])  # different rotations
    np.testing.assert_array_equal(spin_indices(mirrored, 4, seed=3), idx)  # seeded


def test_spin_indices_are_the_nearest_source_of_each_rotation_with_progress(sphere):
    calls = []
    idx = spin_indices(sphere, 3, seed=7, on_spin=lambda: calls.append(1))
    assert len(calls) == 3  # one call per rotation, for the progress bar
    rotations = Rotation.random(3, rng=np.random.default_rng(7)).as_matrix()
    flip = np.diag([-1.0, 1.0, 1.0])
    for s, rotation in enumerate(rotations):
        for lo, turn in ((0, rotation), (H, flip @ rotation @ flip)):
            coords = sphere[lo : lo + H]
            rotated = coords @ turn.T
            probe = np.random.default_rng(s).choice(H, 50, replace=False)
            d2 = ((rotated[probe, None, :] - coords[None]) ** 2).sum(-1)
            np.testing.assert_array_equal(idx[s, lo + probe], lo + d2.argmin(1))


def test_strong_effect_aligned_to_an_roi_is_significant(sphere, spins):
    centre = sphere[:H][np.argmax(sphere[:H, 1])]  # posterior/anterior pole of the left sphere
    d = np.linalg.norm(sphere[:H] - centre, axis=1)
    roi = np.flatnonzero(d < 30)
    map_v = 0.05 * _smooth_random_map(sphere, np.random.default_rng(1))
    map_v[:H] += 0.6 * np.exp(-(d**2) / (2 * 20.0**2))
    result = spin_test(map_v, {"cap": roi}, indices_sv=spins)["cap"]
    assert result.mean_r > 0.3 and result.coherence == 1.0
    assert result.p_mean_r < 0.02 and result.n_spins == 100


def test_null_maps_give_roughly_uniform_p(sphere, spins):
    """Smooth random maps (no effect): spin p-values are not piled up near zero."""
    tree = cKDTree(sphere[:H])
    roi = tree.query_ball_point(sphere[:H][1234], r=25.0)
    p = []
    for seed in range(40):
        map_v = _smooth_random_map(sphere, np.random.default_rng(100 + seed))
        p.append(spin_test(map_v, {"roi": roi}, indices_sv=spins)["roi"].p_mean_r)
    p = np.array(p)
    assert np.mean(p < 0.05) <= 0.15
    assert 0.3 < p.mean() < 0.7


def test_unassigned_vertices_are_left_out(sphere, spins):
    map_v = _smooth_random_map(sphere, np.random.default_rng(5))
    map_v[: H // 4] = np.nan  # a large region without values
    roi = np.arange(H // 8, H // 2)  # half of it inside that region
    result = spin_test(map_v, {"roi": roi, "void": np.arange(10)}, indices_sv=spins)
    assert result["roi"].mean_r == pytest.approx(np.nanmean(map_v[roi]))
    assert 0 < result["roi"].p_mean_r <= 1 and result["roi"].n_spins > 75
    assert np.isnan(result["void"].p_mean_r)
    with pytest.raises(InputError, match="at least 1"):
        spin_indices(sphere, 0, seed=0)
