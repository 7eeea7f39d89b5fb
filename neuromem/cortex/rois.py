"""Regions of interest: named groups of atlas areas, resolved to fsaverage5 vertex indices.

The default set (``neuromem/cortex/data/rois_default.yaml``) groups HCP-MMP1 areas into
V1, V2, V3, V4, LOC, FFA, PPA, RSC, OPA, EBA, STS, ATL and PCC; the YAML file comments each
choice. Category-selective regions (FFA, PPA, EBA, OPA, LOC, RSC) have no Glasser area of
their own, so these are anatomical approximations of functionally defined regions.

A user set is a YAML file::

    name: my_rois                # optional; default: the file name
    atlas: glasser               # or {lh: lh.aparc.annot, rh: rh.aparc.annot}
                                 # or {lh: [lh.A.label, ...], rh: [rh.A.label, ...]}
                                 # or {bilateral: labels.gii, names: lut.txt}
    split_hemispheres: true      # optional; add lh_<NAME> and rh_<NAME> variants (default)
    rois:
      FFA: [FFC]                 # ROI name -> list of area names of the atlas
      scene: [PHA1, PHA2, PHA3, RSC]

Relative atlas paths are read from the YAML file's folder; ``atlas`` keys other than ``lh``,
``rh``, ``bilateral`` are passed to :func:`neuromem.cortex.atlas.load_atlas`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from neuromem.cortex.atlas import Atlas, load_atlas, load_glasser, unknown_name_message
from neuromem.cortex.surface import N_VERTICES_HEMI
from neuromem.errors import InputError, UnknownNameError

COLUMN_PREFIX = "roi_"
"""Prefix of every ROI column of a table (``roi_FFA``)."""


def roi_column(name: str) -> str:
    """The table column of an ROI typed with or without its prefix: ``FFA`` → ``roi_FFA``.

    Users may type ``PPA`` or ``roi_PPA`` wherever an ROI is named; both mean ``roi_PPA``.
    """
    name = name.strip()
    return name if name.startswith(COLUMN_PREFIX) else f"{COLUMN_PREFIX}{name}"


HEMI_PREFIXES = {"left": "lh_", "right": "rh_"}
"""Prefix of the per-hemisphere variant of each ROI (``lh_FFA``, ``rh_FFA``)."""

ROI_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""What an ROI name may look like (it becomes the column ``roi_<NAME>``)."""

_YAML_KEYS = {"name", "atlas", "rois", "split_hemispheres"}


@dataclass(frozen=True, eq=False)
class RoiSet:
    """Named regions of fsaverage5, in a fixed order.

    Parameters
    ----------
    name : str
        Name of the set (``"default"`` for the shipped one).
    atlas : str
        Name of the atlas the areas come from.
    names : tuple of str
        ROI names in order: bilateral ROIs as defined, then ``lh_*``, then ``rh_*``.
    indices : dict of str to ndarray of int64
        Sorted vertex indices (into the 20,484 fsaverage5 vertices) of each ROI.
    definitions : dict of str to list of str
        Atlas area names behind each ROI (the same list for ``FFA``, ``lh_FFA``, ``rh_FFA``).
    atlas_source : str
        Where the atlas came from, recorded in outputs.
    labelled_v : ndarray of bool, shape (20484,), optional
        Vertices with an atlas label; the others (the medial wall) hold no cortical area and
        are left out of vertex statistics. None when unknown (every vertex counts).
    """

    name: str
    atlas: str
    names: tuple[str, ...]
    indices: dict[str, np.ndarray]
    definitions: dict[str, list[str]]
    atlas_source: str = ""
    labelled_v: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def column_names(self) -> list[str]:
        """Table columns of the ROIs, ``roi_<NAME>``, in ROI order."""
        return [f"roi_{name}" for name in self.names]

    def check_names(self, names: Sequence[str]) -> list[str]:
        """Return ``names`` if they are all ROIs of this set; :class:`UnknownNameError` otherwise."""
        for roi in names:
            if roi not in self.indices:
                where = f"ROI set {self.name!r}"
                raise UnknownNameError(unknown_name_message("ROI", roi, where, self.names))
        return list(names)

    def hemisphere(self, roi: str) -> str:
        """``"left"``, ``"right"`` or ``"both"``: the hemispheres an ROI was defined on."""
        self.check_names([roi])
        for hemi, prefix in HEMI_PREFIXES.items():
            if roi.startswith(prefix) and roi[len(prefix) :] in self.indices:
                return hemi
        return "both"

    def vertex_counts(self, roi: str) -> tuple[int, int]:
        """Number of vertices of an ROI in the left and in the right hemisphere."""
        self.check_names([roi])
        n_left = int(np.count_nonzero(self.indices[roi] < N_VERTICES_HEMI))
        return n_left, int(self.indices[roi].size) - n_left

    def to_dict(self) -> dict:
        """JSON-able description for output metadata: atlas, areas and vertex counts per ROI.

        ``indices_sha256`` fingerprints the vertex indices of every ROI, in order, so two
        outputs computed with the same regions can be recognised.
        """
        digest = hashlib.sha256()
        for roi in self.names:
            digest.update(roi.encode() + b"\0" + self.indices[roi].astype("<i8").tobytes())
        return {
            "name": self.name,
            "atlas": self.atlas,
            "atlas_source": self.atlas_source,
            "rois": {
                roi: {
                    "areas": list(self.definitions[roi]),
                    "hemisphere": self.hemisphere(roi),
                    "n_vertices": int(self.indices[roi].size),
                }
                for roi in self.names
            },
            "indices_sha256": digest.hexdigest(),
        }


def build_roi_set(
    atlas: Atlas,
    definitions: Mapping[str, Sequence[str]],
    *,
    name: str,
    split_hemispheres: bool = True,
) -> RoiSet:
    """Resolve ROI definitions (name → atlas area names) to vertex indices.

    Parameters
    ----------
    atlas : Atlas
        The atlas whose area names the definitions use.
    definitions : mapping of str to sequence of str
        ROI name → area names, in the order the ROIs should have.
    name : str
        Name of the set.
    split_hemispheres : bool
        Also make ``lh_<NAME>`` and ``rh_<NAME>`` for every ROI (after all bilateral ROIs).

    Returns
    -------
    RoiSet

    Raises
    ------
    UnknownNameError
        An area name is not in the atlas (the message lists close matches).
    InputError
        A bad ROI name, a duplicated ROI, or an ROI without vertices.
    """
    if not definitions:
        raise InputError(f"ROI set {name!r} defines no ROI")
    bilateral: dict[str, list[str]] = {}
    for roi, areas in definitions.items():
        roi = str(roi)
        if not ROI_NAME.fullmatch(roi):
            raise InputError(
                f"ROI name {roi!r}: use letters, digits and '_', starting with a letter"
            )
        if split_hemispheres and roi.startswith(tuple(HEMI_PREFIXES.values())):
            raise InputError(
                f"ROI name {roi!r} starts with a hemisphere prefix; neuromem adds lh_/rh_ variants "
                "itself (or set split_hemispheres: false)"
            )
        areas = [str(a) for a in ([areas] if isinstance(areas, (str, int)) else areas)]
        if not areas:
            raise InputError(f"ROI {roi!r} lists no atlas area")
        bilateral[roi] = areas
    indices = {roi: atlas.vertices(areas) for roi, areas in bilateral.items()}
    areas_of = dict(bilateral)
    if split_hemispheres:
        for hemi, prefix in HEMI_PREFIXES.items():
            for roi, areas in bilateral.items():
                indices[prefix + roi] = atlas.vertices(areas, hemi)
                areas_of[prefix + roi] = areas
    empty = [roi for roi in areas_of if indices[roi].size == 0]
    if empty:
        raise InputError(
            f"ROI set {name!r}: {', '.join(empty)} cover no vertex of atlas {atlas.name!r} "
            "(is the atlas on fsaverage/fsaverage5, and the area names right?)"
        )
    return RoiSet(
        name=name,
        atlas=atlas.name,
        names=tuple(areas_of),
        indices=indices,
        definitions=areas_of,
        atlas_source=atlas.source,
        labelled_v=atlas.labels_v > 0,
    )


def default_roi_path() -> Path:
    """Path of the shipped default ROI set (``neuromem/cortex/data/rois_default.yaml``)."""
    return Path(str(files("neuromem.cortex").joinpath("data/rois_default.yaml")))


def load_roi_set(spec: str | Path = "default") -> RoiSet:
    """Load an ROI set: ``"default"`` or the path to a YAML file (format in the module docstring).

    Parameters
    ----------
    spec : str or Path
        ``"default"`` for the shipped HCP-MMP1 set, or a YAML file.

    Returns
    -------
    RoiSet
    """
    import yaml

    path = default_roi_path() if str(spec) == "default" else Path(spec)
    if not path.is_file():
        raise InputError(f"ROI set must be 'default' or the path to a YAML file; not found: {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or "rois" not in config or "atlas" not in config:
        raise InputError(f"{path}: expected a mapping with 'atlas' and 'rois' keys")
    unknown = set(config) - _YAML_KEYS
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_YAML_KEYS)}")
    if not isinstance(config["rois"], dict):
        raise InputError(f"{path}: 'rois' must map ROI names to lists of atlas area names")
    return build_roi_set(
        _atlas_from_yaml(config["atlas"], path.parent),
        config["rois"],
        name=str(config.get("name") or path.stem),
        split_hemispheres=bool(config.get("split_hemispheres", True)),
    )


def _atlas_from_yaml(spec, folder: Path) -> Atlas:
    if spec == "glasser":
        return load_glasser()
    if not isinstance(spec, dict):
        raise InputError(
            f"atlas must be 'glasser' or a mapping with lh/rh (or bilateral) files, got {spec!r}"
        )

    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return folder / Path(str(value)).expanduser()

    kwargs = dict(spec)
    for key in ("lh", "rh", "bilateral"):
        if key in kwargs:
            kwargs[key] = resolve(kwargs[key])
    if isinstance(kwargs.get("names"), str):
        kwargs["names"] = resolve(kwargs["names"])
    try:
        return load_atlas(**kwargs)
    except TypeError as exc:
        raise InputError(f"bad atlas entry {spec!r}: {exc}") from exc
