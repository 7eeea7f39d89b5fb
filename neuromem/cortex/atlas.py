"""Cortical atlases on fsaverage5: a label per vertex and a name per label.

Two sources:

- :func:`load_glasser` reads HCP-MMP1 (Glasser et al. 2016, 180 areas a hemisphere) from the
  fsaverage files that the ``neuropythy`` package ships, without importing neuropythy. The area
  names come from ``neuromem/cortex/data/glasser180.txt`` (standard HCP-MMP1 order, V1 = 1).
- :func:`load_atlas` reads user files: FreeSurfer ``.annot``, ``.label`` (one area per file),
  ``.mgz``/``.mgh`` and GIfTI label ``.gii``, one file per hemisphere or one bilateral file.

Files on fsaverage (163,842 vertices a hemisphere) are accepted and cut to their first 10,242
vertices, which are fsaverage5's (the icosahedral meshes are nested).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from neuromem.cortex.surface import HEMI_SLICES, HEMIS, N_VERTICES, N_VERTICES_HEMI, check_hemi
from neuromem.errors import InputError, UnknownNameError, VertexCountError

N_VERTICES_HEMI_FSAVERAGE = 163842
"""Vertices per hemisphere of fsaverage; its first 10,242 are fsaverage5's."""

GLASSER_FILES = "lib/data/fsaverage/surf/{hemi}.glasser16_atlas.v1_0.mgz"
"""Location of neuropythy's HCP-MMP1 files inside the installed package (``hemi`` is lh/rh)."""

UNASSIGNED_NAMES = frozenset({"", "???", "unknown", "medial_wall", "medial wall", "medial.wall"})
"""Area names (lower case) that mean "no area": their vertices get label 0."""

_HEMI_PREFIXES = {"left": ("L_", "lh.", "lh_"), "right": ("R_", "rh.", "rh_")}
_FILE_HEMI = {"left": "lh", "right": "rh"}


@dataclass(frozen=True, eq=False)
class Atlas:
    """A parcellation of fsaverage5: one integer label per vertex and a name per label.

    Parameters
    ----------
    name : str
        Short name recorded in outputs (``"glasser"`` for HCP-MMP1).
    labels_v : ndarray of int32, shape (20484,)
        Label of each vertex, left hemisphere first; 0 means unassigned (e.g. medial wall).
        A label means the same area in both hemispheres.
    names : dict of int to str
        Area name of each label ``> 0``.
    source : str
        Where the labels came from (files, package version), recorded in outputs.
    """

    name: str
    labels_v: np.ndarray
    names: dict[int, str]
    source: str = ""
    _by_name: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels_v = np.array(self.labels_v, dtype=np.int32)
        if labels_v.shape != (N_VERTICES,):
            raise VertexCountError(
                f"atlas {self.name!r} has labels of shape {labels_v.shape}; expected ({N_VERTICES},)"
            )
        labels_v.flags.writeable = False
        unnamed = sorted(set(np.unique(labels_v).tolist()) - set(self.names) - {0})
        if unnamed:
            raise InputError(
                f"atlas {self.name!r}: labels {unnamed[:10]} have no name in its table"
            )
        by_name: dict[str, int] = {}
        for label, area in self.names.items():
            if area in by_name:
                raise InputError(f"atlas {self.name!r}: area name {area!r} is used by two labels")
            by_name[area] = label
        object.__setattr__(self, "labels_v", labels_v)
        object.__setattr__(self, "names", dict(self.names))
        object.__setattr__(self, "_by_name", by_name)

    @property
    def areas(self) -> list[str]:
        """Area names in label order."""
        return [self.names[label] for label in sorted(self.names)]

    def label(self, area: str) -> int:
        """The label value of an area name; :class:`UnknownNameError` with close matches if absent."""
        if area in self._by_name:
            return self._by_name[area]
        raise UnknownNameError(
            unknown_name_message("area", area, f"atlas {self.name!r}", self.areas)
        )

    def vertices(self, areas: Sequence[str], hemi: str | None = None) -> np.ndarray:
        """Sorted vertex indices (into 20,484) covered by any of ``areas``.

        Parameters
        ----------
        areas : sequence of str
            Area names of this atlas.
        hemi : {"left", "right"} or None
            Restrict to one hemisphere; None for both.

        Returns
        -------
        ndarray of int64, shape (n,)
        """
        labels = [self.label(area) for area in areas]
        mask_v = np.isin(self.labels_v, labels)
        if hemi is not None:
            keep_v = np.zeros(N_VERTICES, dtype=bool)
            keep_v[HEMI_SLICES[check_hemi(hemi)]] = True
            mask_v &= keep_v
        return np.flatnonzero(mask_v)

    def to_dict(self) -> dict:
        """JSON-able description for output metadata."""
        return {"name": self.name, "source": self.source, "n_areas": len(self.names)}


def unknown_name_message(kind: str, name: str, where: str, known: Sequence[str]) -> str:
    """Message for an unknown ``name`` of a ``kind`` (area, ROI) that lists close matches."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if name.lower() in lowered and lowered[name.lower()] not in close:
        close.insert(0, lowered[name.lower()])
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"unknown {kind} {name!r} in {where}{hint} ({len(known)} known)"


def read_name_table(path: str | Path) -> dict[int, str]:
    """Read a label → name table: one ``<label> <name> [anything]`` per line, ``#`` comments.

    FreeSurfer colour look-up tables (``FreeSurferColorLUT.txt`` layout) have this form.
    """
    table: dict[int, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2 or not re.fullmatch(r"-?\d+", fields[0]):
            raise InputError(f"{path}:{number}: expected '<label> <name>', got {line.strip()!r}")
        table[int(fields[0])] = fields[1]
    return table


@lru_cache(maxsize=1)
def glasser_names() -> dict[int, str]:
    """The 180 HCP-MMP1 area names by label (1 = V1, 2 = MST, ..., 180 = p24)."""
    return read_name_table(files("neuromem.cortex").joinpath("data/glasser180.txt"))


def neuropythy_data_dir() -> Path:
    """neuropythy's installed package folder, found without importing it (that takes ~9 s)."""
    spec = importlib.util.find_spec("neuropythy")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the Glasser atlas needs the 'neuropythy' package: pip install neuropythy")
    return Path(spec.submodule_search_locations[0])


@lru_cache(maxsize=1)
def load_glasser() -> Atlas:
    """HCP-MMP1 (Glasser 2016) on fsaverage5, from neuropythy's ``glasser16_atlas`` files (cached).

    Returns
    -------
    Atlas
        Named ``"glasser"``: labels 1..180 in the standard HCP-MMP1 order, the same label for
        the same area in both hemispheres, 0 on unassigned vertices (NaN in the files).
    """
    from importlib.metadata import version

    root = neuropythy_data_dir()
    halves = []
    for hemi in HEMIS:
        path = root / GLASSER_FILES.format(hemi=_FILE_HEMI[hemi])
        if not path.is_file():
            raise InputError(f"neuropythy's Glasser atlas file is missing: {path}")
        halves.append(_read_volume_labels(path, hemi))
    return Atlas(
        name="glasser",
        labels_v=np.concatenate(halves),
        names=glasser_names(),
        source=f"HCP-MMP1 v1.0 from neuropythy {version('neuropythy')} (glasser16_atlas.v1_0.mgz)",
    )


def load_atlas(
    lh: str | Path | Sequence[str | Path] | None = None,
    rh: str | Path | Sequence[str | Path] | None = None,
    *,
    bilateral: str | Path | None = None,
    names: Mapping[int, str] | str | Path | None = None,
    name: str | None = None,
) -> Atlas:
    """Read a user atlas from FreeSurfer or GIfTI files.

    Parameters
    ----------
    lh, rh : path or sequence of paths
        One file per hemisphere: ``.annot``, ``.mgz``/``.mgh`` or GIfTI label ``.gii``, with
        10,242 (fsaverage5) or 163,842 (fsaverage, cut to its first 10,242) vertices. For
        FreeSurfer ``.label`` files give a list, one area per file, named after the file
        (``lh.FFA.label`` → ``FFA``); a later file wins where two overlap.
    bilateral : path
        Instead of ``lh``/``rh``: one ``.mgz``/``.mgh``/``.gii`` file with 20,484 values
        (left first) or 327,684 (fsaverage, left first).
    names : dict of int to str, or path
        Label → name table for ``.mgz``/``.mgh`` files (or a table file read by
        :func:`read_name_table`). Without it, areas are named by their label value. ``.annot``
        and ``.gii`` files carry their own names.
    name : str
        The atlas name; by default the first file's name without hemisphere prefix and suffix.

    Returns
    -------
    Atlas
        Hemisphere prefixes and the ``_ROI`` suffix (``L_V1_ROI`` → ``V1``) are removed from
        area names so that one name covers both hemispheres. Value 0 of ``.mgz/.mgh/.gii``
        files, unlabelled ``.annot`` vertices and areas called ``???``/``unknown``/``medial
        wall`` are unassigned (label 0). Areas get labels 1..K in the order of the files'
        label values.
    """
    if isinstance(names, (str, Path)):
        names = read_name_table(names)
    if bilateral is not None:
        if lh is not None or rh is not None:
            raise InputError("give either lh/rh files or one bilateral file, not both")
        values, table = _read_hemi_file(Path(bilateral), "both", names)
        parts = [(hemi, values[HEMI_SLICES[hemi]], table) for hemi in HEMIS]
    else:
        if lh is None or rh is None:
            raise InputError("an atlas needs both an lh and an rh file (or bilateral=...)")
        parts = []
        for hemi, spec in (("left", lh), ("right", rh)):
            if isinstance(spec, (str, Path)):
                values, table = _read_hemi_file(Path(spec), hemi, names)
            else:
                values, table = _read_label_files([Path(p) for p in spec], hemi)
            parts.append((hemi, values, table))
    labels_v, merged = _merge_tables(parts)
    sources = [
        Path(p) for p in ([bilateral] if bilateral is not None else _as_list(lh) + _as_list(rh))
    ]
    return Atlas(
        name=name or _default_name(sources[0], several=not isinstance(lh, (str, Path, type(None)))),
        labels_v=labels_v,
        names=merged,
        source=", ".join(str(p) for p in sources),
    )


def _as_list(spec) -> list:
    return [spec] if isinstance(spec, (str, Path)) else list(spec)


def _default_name(path: Path, several: bool) -> str:
    """``lh.HCPMMP1.annot`` → ``HCPMMP1``; a list of ``.label`` files → their folder's name."""
    if several:
        return path.resolve().parent.name
    stem = path.name.rsplit(".", 1)[0]
    stem = stem[: -len(".label")] if stem.endswith(".label") else stem
    return _strip_hemi(stem, "both")


def _strip_hemi(raw: str, hemi: str) -> str:
    """``L_V1_ROI`` → ``V1``, ``lh.FFA`` → ``FFA`` (prefixes of ``hemi``; either for "both")."""
    prefixes = (
        _HEMI_PREFIXES["left"] + _HEMI_PREFIXES["right"] if hemi == "both" else _HEMI_PREFIXES[hemi]
    )
    for prefix in prefixes:
        if raw.startswith(prefix) and len(raw) > len(prefix):
            raw = raw[len(prefix) :]
            break
    return raw[: -len("_ROI")] if raw.endswith("_ROI") and len(raw) > 4 else raw


def _merge_tables(parts) -> tuple[np.ndarray, dict[int, str]]:
    """Give each area name one label over both hemispheres, in order of the files' label values."""
    pairs = sorted(
        {
            (value, _strip_hemi(raw, hemi))
            for hemi, _, table in parts
            for value, raw in table.items()
        },
    )
    merged: dict[str, int] = {}
    for _, area in pairs:
        if area.lower() not in UNASSIGNED_NAMES and area not in merged:
            merged[area] = len(merged) + 1
    labels_v = np.zeros(N_VERTICES, dtype=np.int32)
    for hemi, values, table in parts:
        lookup = {value: merged.get(_strip_hemi(raw, hemi), 0) for value, raw in table.items()}
        # 0 (and -1, FreeSurfer's "no label" in .annot files) are unassigned unless named
        unnamed = sorted(v for v in set(np.unique(values).tolist()) - set(lookup) if v > 0)
        if unnamed:
            raise InputError(f"{hemi} hemisphere: labels {unnamed[:10]} have no name in the table")
        mapped = np.zeros(len(values), dtype=np.int32)
        for value, label in lookup.items():
            mapped[values == value] = label
        labels_v[HEMI_SLICES[hemi]] = mapped
    return labels_v, {label: area for area, label in merged.items()}


def _fit_vertices(values: np.ndarray, path: Path, hemi: str) -> np.ndarray:
    """Check a hemisphere's (or both hemispheres') vertex count; cut fsaverage to fsaverage5."""
    n = values.shape[0]
    if hemi == "both":
        if n == N_VERTICES:
            return values
        if n == 2 * N_VERTICES_HEMI_FSAVERAGE:
            return np.concatenate(
                [values[:N_VERTICES_HEMI], values[N_VERTICES_HEMI_FSAVERAGE:][:N_VERTICES_HEMI]]
            )
        raise VertexCountError(
            f"{path} has {n} values; a bilateral file needs {N_VERTICES} (fsaverage5) or "
            f"{2 * N_VERTICES_HEMI_FSAVERAGE} (fsaverage), left hemisphere first"
        )
    if n == N_VERTICES_HEMI:
        return values
    if n == N_VERTICES_HEMI_FSAVERAGE:
        return values[:N_VERTICES_HEMI]
    raise VertexCountError(
        f"{path} has {n} vertices; a {hemi} hemisphere file needs {N_VERTICES_HEMI} (fsaverage5) "
        f"or {N_VERTICES_HEMI_FSAVERAGE} (fsaverage, cut to its first {N_VERTICES_HEMI})"
    )


def _read_volume_labels(path: Path, hemi: str) -> np.ndarray:
    """Integer labels from an ``.mgz``/``.mgh`` file (NaN → 0), cut to fsaverage5."""
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float64).ravel()
    data = np.nan_to_num(data, nan=0.0)
    if not np.array_equal(data, np.round(data)):
        raise InputError(f"{path} holds non-integer values; an atlas file needs integer labels")
    return _fit_vertices(data.astype(np.int64), path, hemi)


def _read_hemi_file(path: Path, hemi: str, names: Mapping[int, str] | None):
    """Labels and label → raw name table of one ``.annot``/``.mgz``/``.mgh``/``.gii`` file."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(f"atlas file not found: {path}")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".annot":
        if hemi == "both":
            raise InputError(f"{path}: an .annot file covers one hemisphere; give lh= and rh=")
        values, _, raw_names = nib.freesurfer.read_annot(str(path))
        table = {i: n.decode() if isinstance(n, bytes) else str(n) for i, n in enumerate(raw_names)}
        return _fit_vertices(np.asarray(values, dtype=np.int64), path, hemi), table
    if suffix in (".mgz", ".mgh"):
        values = _read_volume_labels(path, hemi)
    elif suffix == ".gii":
        image = nib.load(str(path))
        if not image.darrays:
            raise InputError(f"{path} holds no data array")
        values = _fit_vertices(
            np.asarray(image.darrays[0].data).ravel().astype(np.int64), path, hemi
        )
        gifti_names = image.labeltable.get_labels_as_dict()
        if gifti_names and names is None:
            names = gifti_names
    elif suffix == ".label":
        raise InputError(f"{path}: give .label files as a list per hemisphere (one area per file)")
    else:
        raise InputError(f"{path}: unknown atlas format; use .annot, .label, .mgz, .mgh or .gii")
    present = sorted(set(np.unique(values).tolist()) - {0})
    table = dict(names) if names is not None else {v: str(v) for v in present}
    table[0] = "???"  # value 0 of label volumes is "no area"
    return values, table


def _read_label_files(paths: Sequence[Path], hemi: str):
    """One hemisphere's labels from FreeSurfer ``.label`` files, label k+1 for the k-th file."""
    import nibabel as nib

    if hemi == "both" or not paths:
        raise InputError("give .label files as a non-empty list per hemisphere")
    values = np.zeros(N_VERTICES_HEMI, dtype=np.int64)
    table = {0: "???"}
    for k, path in enumerate(paths, 1):
        if path.suffix.lower() != ".label":
            raise InputError(f"{path}: a list of files per hemisphere must hold .label files")
        if not path.is_file():
            raise InputError(f"atlas file not found: {path}")
        vertices = np.asarray(nib.freesurfer.read_label(str(path)), dtype=np.int64)
        if vertices.size and vertices.max() >= N_VERTICES_HEMI_FSAVERAGE:
            raise VertexCountError(
                f"{path} names vertex {vertices.max()}; expected indices below {N_VERTICES_HEMI} "
                f"(fsaverage5) or {N_VERTICES_HEMI_FSAVERAGE} (fsaverage)"
            )
        values[vertices[vertices < N_VERTICES_HEMI]] = k
        table[k] = path.name[: -len(".label")]
    return values, table
