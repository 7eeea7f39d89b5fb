"""The fsaverage5 surface: meshes, hemisphere split, sphere coordinates and sulcal depth.

Everything is read from the copy of fsaverage5 that nilearn ships, so nothing is downloaded.
Vertex arrays follow one convention across neuromem: 20,484 values, the left hemisphere in
``0..10241`` and the right hemisphere in ``10242..20483``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from neuromem.errors import InputError, VertexCountError

N_VERTICES_HEMI = 10242
"""Vertices per hemisphere of fsaverage5."""

N_VERTICES = 2 * N_VERTICES_HEMI
"""Vertices of both hemispheres of fsaverage5 (left first, then right)."""

HEMIS = ("left", "right")
"""Hemisphere names, in vertex order."""

HEMI_SLICES = {"left": slice(0, N_VERTICES_HEMI), "right": slice(N_VERTICES_HEMI, N_VERTICES)}
"""Where each hemisphere lies in a ``(..., 20484)`` vertex array."""

MESH_KINDS = ("pial", "white", "inflated", "sphere")
"""Meshes available from :func:`load_mesh`."""

_NILEARN_MESH = {
    "pial": "pial",
    "white": "white_matter",
    "inflated": "inflated",
    "sphere": "sphere",
}


class Mesh(NamedTuple):
    """One hemisphere's triangle mesh (read-only arrays).

    Attributes
    ----------
    coordinates : ndarray of shape (10242, 3)
        Vertex positions in mm (RAS; for the sphere, radius 100).
    faces : ndarray of shape (20480, 3)
        Vertex indices of each triangle, into this hemisphere's vertices.
    """

    coordinates: np.ndarray
    faces: np.ndarray


def check_hemi(hemi: str) -> str:
    """Return ``hemi`` if it is ``"left"`` or ``"right"``; raise :class:`InputError` otherwise."""
    if hemi not in HEMIS:
        raise InputError(f"hemisphere must be 'left' or 'right', got {hemi!r}")
    return hemi


def check_n_vertices(values: np.ndarray, *, name: str = "array") -> None:
    """Raise :class:`VertexCountError` unless the last axis of ``values`` has 20,484 entries.

    Parameters
    ----------
    values : array-like of shape (..., 20484)
        Any array or tensor with a ``shape``.
    name : str
        What the array is, for the error message.
    """
    shape = tuple(values.shape)
    if not shape or shape[-1] != N_VERTICES:
        raise VertexCountError(
            f"{name} has shape {shape}; expected the last axis to hold {N_VERTICES} fsaverage5 "
            f"vertices ({N_VERTICES_HEMI} left, then {N_VERTICES_HEMI} right)"
        )


def split_hemis(values_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a ``(..., 20484)`` vertex array into its left and right ``(..., 10242)`` halves."""
    check_n_vertices(values_v, name="vertex array")
    return values_v[..., HEMI_SLICES["left"]], values_v[..., HEMI_SLICES["right"]]


@lru_cache(maxsize=1)
def _fsaverage5():
    from nilearn import datasets

    return datasets.load_fsaverage("fsaverage5")


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array)  # own copy: the cache must not alias nilearn's objects
    array.flags.writeable = False
    return array


@lru_cache(maxsize=8)
def load_mesh(kind: str = "pial", hemi: str = "left") -> Mesh:
    """One hemisphere's fsaverage5 mesh, from nilearn's shipped files (cached).

    Parameters
    ----------
    kind : {"pial", "white", "inflated", "sphere"}
        Which surface.
    hemi : {"left", "right"}
        Which hemisphere.

    Returns
    -------
    Mesh
        ``coordinates`` (10242, 3) float in mm and ``faces`` (20480, 3) int, both read-only.
    """
    if kind not in MESH_KINDS:
        raise InputError(f"mesh kind must be one of {MESH_KINDS}, got {kind!r}")
    part = _fsaverage5()[_NILEARN_MESH[kind]].parts[check_hemi(hemi)]
    return Mesh(_read_only(part.coordinates), _read_only(part.faces))


@lru_cache(maxsize=8)
def mesh_coords(kind: str = "pial") -> np.ndarray:
    """Vertex positions of both hemispheres, ``(20484, 3)`` in mm (left rows first; read-only)."""
    coords_v3 = np.concatenate([load_mesh(kind, hemi).coordinates for hemi in HEMIS])
    coords_v3.flags.writeable = False
    return coords_v3


def sphere_coords() -> np.ndarray:
    """Positions on the registration sphere, ``(20484, 3)`` (radius 100 mm; read-only).

    Each hemisphere has its own sphere centred on the origin: rows ``0..10241`` are the left
    sphere, rows ``10242..20483`` the right one. Rotating each half is how spin tests build
    nulls that keep the spatial autocorrelation of a map.
    """
    return mesh_coords("sphere")


@lru_cache(maxsize=1)
def sulcal_depth() -> np.ndarray:
    """FreeSurfer sulcal depth of fsaverage5, ``(20484,)`` float (positive in sulci; read-only)."""
    from nilearn import datasets

    image = datasets.load_fsaverage_data(mesh="fsaverage5", data_type="sulcal")
    depth_v = np.concatenate([np.asarray(image.data.parts[hemi]).ravel() for hemi in HEMIS])
    depth_v.flags.writeable = False
    return depth_v
