"""Spin tests: p-values for ROI summaries of a vertex map under spatially autocorrelated nulls.

Following Alexander-Bloch et al. (2018, NeuroImage 178:540), each null map is the observed
map rotated on the registration sphere by a uniformly random rotation. The left hemisphere's
sphere is rotated by ``R`` and the right one's by ``F R F`` with ``F = diag(-1, 1, 1)``, the
reflection across the mid-sagittal plane, so the two hemispheres spin as mirror images. Each
rotated vertex position takes the value of the nearest original vertex of the same hemisphere
(nearest-neighbour reassignment with :class:`scipy.spatial.cKDTree`; several targets may take the
same source). Vertices outside the analysed cortex (medial wall, vertices with no value: NaN in
the map) carry no value: a target whose source is such a vertex becomes NaN in that null map,
and ROI summaries of every map, observed or null, use only the ROI's vertices that hold a value.

The summaries tested per ROI are the mean r (two-sided: ``|mean|``) and the sign coherence,
``max(frac r < 0, frac r > 0)``. p-values are ``(1 + #{null >= observed}) / (1 + n_spins)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from neuromem.cortex.surface import N_VERTICES, N_VERTICES_HEMI, check_n_vertices
from neuromem.errors import InputError

MIRROR = np.diag([-1.0, 1.0, 1.0])
"""Reflection across the mid-sagittal plane (x → -x)."""


def random_rotations(n_spins: int, seed: int) -> np.ndarray:
    """``(n_spins, 3, 3)`` rotation matrices drawn uniformly from SO(3) with a seeded generator."""
    if n_spins < 1:
        raise InputError(f"the number of spins must be at least 1; got {n_spins}")
    return Rotation.random(n_spins, rng=np.random.default_rng(seed)).as_matrix()


def spin_indices(sphere_v3: np.ndarray, n_spins: int, seed: int, *,
                 on_spin: Callable[[], None] | None = None) -> np.ndarray:
    """Source vertex of every vertex under each random rotation.

    Parameters
    ----------
    sphere_v3 : ndarray of shape (20484, 3)
        Sphere positions, left hemisphere rows first, each hemisphere centred on the origin
        (:func:`neuromem.cortex.surface.sphere_coords`).
    n_spins : int
        Number of rotations.
    seed : int
        Seed of the rotations.
    on_spin : callable, optional
        Called once per rotation done (both hemispheres; progress).

    Returns
    -------
    ndarray of shape (n_spins, 20484) int32
        ``null_map = map[indices[s]]`` is the ``s``-th rotated map.
    """
    sphere_v3 = np.asarray(sphere_v3, dtype=np.float64)
    if sphere_v3.shape != (N_VERTICES, 3):
        raise InputError(f"sphere coordinates must be ({N_VERTICES}, 3); got {sphere_v3.shape}")
    rotations = random_rotations(n_spins, seed)
    indices = np.empty((n_spins, N_VERTICES), dtype=np.int32)
    halves = {0: sphere_v3[:N_VERTICES_HEMI], N_VERTICES_HEMI: sphere_v3[N_VERTICES_HEMI:]}
    trees = {offset: cKDTree(coords_h3) for offset, coords_h3 in halves.items()}
    for s, rotation in enumerate(rotations):
        for offset, coords_h3 in halves.items():
            # the right hemisphere spins as the mirror image of the left
            turn = MIRROR @ rotation @ MIRROR if offset else rotation
            _, nearest = trees[offset].query(coords_h3 @ turn.T, k=1, workers=-1)
            indices[s, offset : offset + N_VERTICES_HEMI] = nearest + offset
        if on_spin is not None:
            on_spin()
    return indices


def _roi_summaries(maps_sv: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sign coherence over an ROI's vertices that hold a value, per map."""
    values = maps_sv[:, idx]
    finite = np.isfinite(values)
    count = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(1) / count
        frac_neg = (finite & (values < 0)).sum(1) / count
        frac_pos = (finite & (values > 0)).sum(1) / count
    return mean, np.maximum(frac_neg, frac_pos)


@dataclass(frozen=True)
class SpinResult:
    """Spin-test p-values of one ROI.

    Attributes
    ----------
    mean_r : float
        Observed mean over the ROI's vertices with a value.
    coherence : float
        Observed ``max(frac r < 0, frac r > 0)``.
    p_mean_r : float
        Two-sided spin p of the mean (NaN when the ROI has no value).
    p_coherence : float
        Spin p of the coherence.
    n_spins : int
        Null maps used (those where the ROI received at least one value).
    """

    mean_r: float
    coherence: float
    p_mean_r: float
    p_coherence: float
    n_spins: int


def spin_test(
    map_v: np.ndarray,
    roi_indices: Mapping[str, np.ndarray],
    *,
    n_spins: int = 1000,
    seed: int = 0,
    sphere_v3: np.ndarray | None = None,
    indices_sv: np.ndarray | None = None,
    on_spin: Callable[[], None] | None = None,
) -> dict[str, SpinResult]:
    """Spin-test p-values of each ROI's mean and sign coherence of a vertex map.

    Parameters
    ----------
    map_v : ndarray of shape (20484,)
        Vertex map (e.g. r with memorability); NaN marks vertices without a value.
    roi_indices : mapping of str to ndarray of int
        Vertex indices of each ROI.
    n_spins : int
        Number of random rotations.
    seed : int
        Seed of the rotations.
    sphere_v3 : ndarray of shape (20484, 3), optional
        Sphere positions; default :func:`neuromem.cortex.surface.sphere_coords`.
    indices_sv : ndarray of shape (n_spins, 20484), optional
        Rotations already computed by :func:`spin_indices` (reused across maps); when given,
        ``n_spins``, ``seed`` and ``sphere_v3`` are not used.
    on_spin : callable, optional
        Called once per rotation computed (progress; see :func:`spin_indices`).

    Returns
    -------
    dict of str to SpinResult
    """
    map_v = np.asarray(map_v, dtype=np.float64)
    check_n_vertices(map_v, name="vertex map")
    if indices_sv is None:
        if sphere_v3 is None:
            from neuromem.cortex.surface import sphere_coords

            sphere_v3 = sphere_coords()
        indices_sv = spin_indices(sphere_v3, n_spins, seed, on_spin=on_spin)
    nulls_sv = map_v[indices_sv]
    out = {}
    for roi, idx in roi_indices.items():
        idx = np.asarray(idx, dtype=np.int64)
        obs_mean, obs_coh = (float(a[0]) for a in _roi_summaries(map_v[None], idx))
        null_mean, null_coh = _roi_summaries(nulls_sv, idx)
        valid = np.isfinite(null_mean)
        n_valid = int(valid.sum())
        if not np.isfinite(obs_mean) or n_valid == 0:
            out[roi] = SpinResult(obs_mean, obs_coh, np.nan, np.nan, n_valid)
            continue
        p_mean = (1 + np.sum(np.abs(null_mean[valid]) >= abs(obs_mean))) / (1 + n_valid)
        p_coh = (1 + np.sum(null_coh[valid] >= obs_coh)) / (1 + n_valid)
        out[roi] = SpinResult(obs_mean, obs_coh, float(p_mean), float(p_coh), n_valid)
    return out
