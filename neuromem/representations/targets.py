"""What representations are compared with: image rows, memorability splits and brain targets.

Tables are read through :mod:`neuromem.runtime.storage` (:func:`neuromem.scoring.table.open_table`),
so every table may be a local path or a URI (``s3://``, ``gs://``, ``file://``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from neuromem.cortex.rois import COLUMN_PREFIX, roi_column
from neuromem.data.lamem import SPLITS, attach_splits, split_indices
from neuromem.data.schema import (
    BASE_COLUMNS,
    CATEGORY,
    DATASET,
    IMAGE_ID,
    MEMORABILITY,
    SOURCE,
    SPLIT,
)
from neuromem.errors import InputError, UnknownNameError
from neuromem.representations.readout import stratified_test_rows
from neuromem.runtime.storage import read_json

#: How brain targets are read: the ROI's vertices, its score column, or vertices when present.
TARGET_KINDS = ("auto", "vertices", "rois")
#: Fewest images with a memorability score for a memorability read-out.
MIN_SCORED = 10


def read_image_rows(table: str, *, lamem_root: str | None = None,
                    limit: int | None = None) -> pd.DataFrame:
    """Image rows of a table, one per ``image_id``, in table order.

    Parameters
    ----------
    table : str
        Score table (or any Parquet of dataset rows) with ``image_id`` and ``source``.
    lamem_root : str or None
        LaMem folder whose split files give the :data:`~neuromem.data.lamem.SPLITS` column.
    limit : int or None
        Keep the first ``limit`` images.

    Returns
    -------
    pandas.DataFrame
        The base columns of :mod:`neuromem.data.schema` (``dataset`` is ``"table"`` and the
        others null when the table has none) and, when present, ``splits``.
    """
    from neuromem.scoring.table import open_table

    dataset = open_table(table)
    wanted = [c for c in (*BASE_COLUMNS, SPLITS) if c in dataset.schema.names]
    if IMAGE_ID not in wanted or SOURCE not in wanted:
        raise InputError(f"{table}: expected columns {IMAGE_ID} and {SOURCE} (a score table or "
                         f"dataset listing); it has {dataset.schema.names}")
    rows = dataset.to_table(columns=wanted).to_pandas().drop_duplicates(IMAGE_ID)
    rows[IMAGE_ID] = rows[IMAGE_ID].astype(str)
    if DATASET not in rows:
        rows[DATASET] = "table"
    for column in (SPLIT, CATEGORY):
        if column not in rows:
            rows[column] = None
    if MEMORABILITY not in rows:
        rows[MEMORABILITY] = np.nan
    if lamem_root is not None:
        rows = attach_splits(rows, lamem_root)
    rows = rows[[*BASE_COLUMNS, *[c for c in rows if c not in BASE_COLUMNS]]]
    rows = rows.reset_index(drop=True)
    return rows.iloc[:limit].reset_index(drop=True) if limit is not None else rows


def category_labels(rows: pd.DataFrame) -> np.ndarray | None:
    """The rows' category labels for stratified splits, or None when no row has one."""
    if CATEGORY not in rows or rows[CATEGORY].isna().all():
        return None
    labels = rows[CATEGORY].astype(object).where(rows[CATEGORY].notna(), None)
    return None if all(v in (None, "", "None") for v in labels) else labels.to_numpy()


def readout_splits(rows: pd.DataFrame, seed: int, *, n_random: int = 5,
                   test_fraction: float = 0.2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/test splits of the rows with a memorability score.

    LaMem's ``train_k → test_k`` splits when the rows have the
    :data:`~neuromem.data.lamem.SPLITS` column; otherwise ``n_random`` random splits holding out
    ``test_fraction`` of the rows, stratified by category where the rows have category labels.

    Returns
    -------
    dict
        Split name → (train indices, test indices), positions among the scored rows.
    """
    scored = rows[rows[MEMORABILITY].notna()].reset_index(drop=True)
    if SPLITS in scored and scored[SPLITS].notna().any():
        splits = split_indices(scored[SPLITS].tolist())
        if splits:
            return splits
    rng = np.random.default_rng(seed)
    labels = category_labels(scored)
    n = len(scored)
    splits = {}
    for k in range(1, n_random + 1):
        if labels is None:
            test = np.sort(rng.permutation(n)[: max(1, int(round(test_fraction * n)))])
        else:
            test = stratified_test_rows(labels, test_fraction, rng)
        splits[f"random_{k}"] = (np.setdiff1d(np.arange(n), test), test)
    return splits


@dataclass
class BrainTargets:
    """Responses per ROI for the images of a brain table.

    Attributes
    ----------
    image_ids : list of str
        Images with responses, in row order of ``targets``.
    targets : dict
        ROI name → responses ``(N, T)`` float64 (``T`` vertices, or 1 for a score column).
    ceilings : dict
        ROI name → noise ceiling (only ROIs given one).
    categories : ndarray or None
        ``(N,)`` category label of each image (stratifies the predictivity splits), or None.
    """

    image_ids: list[str]
    targets: dict[str, np.ndarray]
    ceilings: dict[str, float] = field(default_factory=dict)
    categories: np.ndarray | None = None

    @property
    def n_targets(self) -> int:
        """Targets over all ROIs."""
        return sum(y.shape[1] for y in self.targets.values())

    def restrict(self, image_ids: list[str]) -> BrainTargets:
        """The targets of ``image_ids`` only (in this object's order)."""
        keep = set(image_ids)
        rows = [i for i, image_id in enumerate(self.image_ids) if image_id in keep]
        return BrainTargets([self.image_ids[i] for i in rows],
                            {roi: y[rows] for roi, y in self.targets.items()}, self.ceilings,
                            None if self.categories is None else self.categories[rows])


def roi_names(names: list[str] | None) -> list[str] | None:
    """ROI names as typed (``FFA`` or ``roi_FFA``) → bare names (``FFA``)."""
    if names is None:
        return None
    return [roi_column(name)[len(COLUMN_PREFIX):] for name in names]


def read_brain_targets(
    table: str,
    *,
    kind: str = "auto",
    rois: list[str] | None = None,
    roi_set: str = "default",
    max_vertices: int = 256,
    ceiling: str | None = None,
    seed: int = 0,
) -> BrainTargets:
    """A measured or predicted score table's responses per ROI, averaged per image id.

    Parameters
    ----------
    table : str
        Score table (local path or URI).
    kind : {"auto", "vertices", "rois"}
        Targets: up to ``max_vertices`` vertices per ROI (seeded subsample, ``vertices``
        column), or the ROI's score column; ``auto``: vertices when the table has them.
    rois : list of str or None
        ROI names (with or without ``roi_``); None: every bilateral ROI.
    roi_set : str
        ROI set of vertex targets.
    max_vertices : int
        Most vertices per ROI.
    ceiling : str or None
        JSON file ``{ROI: ceiling}`` (local path or URI).
    seed : int
        Seed of the vertex subsample.

    Raises
    ------
    UnknownNameError
        An ROI the table (or the ROI set) does not have.
    """
    from neuromem.scoring.table import (
        VERTICES_COLUMN,
        decode_vertices,
        iter_batches,
        open_table,
        roi_columns,
    )

    if kind not in TARGET_KINDS:
        raise InputError(f"--targets must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
    rois = roi_names(rois)
    dataset = open_table(table)
    names = dataset.schema.names
    if kind == "auto":
        kind = "vertices" if VERTICES_COLUMN in names else "rois"
    if kind == "rois":
        available = [c[len(COLUMN_PREFIX):] for c in roi_columns(dataset.schema)]
        chosen = rois or [r for r in available if not r.startswith(("lh_", "rh_"))]
        missing = [r for r in chosen if r not in available]
        if missing or not chosen:
            raise UnknownNameError(f"{table} has no ROI column(s) for {missing or 'any ROI'}; "
                                   f"it has {', '.join(available) or 'none'}")
        frame = dataset.to_table(columns=[IMAGE_ID, *[roi_column(r) for r in chosen]]).to_pandas()
        frame = frame.groupby(IMAGE_ID, sort=False).mean()
        targets = {r: frame[roi_column(r)].to_numpy(np.float64)[:, None] for r in chosen}
        image_ids = frame.index.astype(str).tolist()
    else:
        from neuromem.cortex.rois import load_roi_set

        if VERTICES_COLUMN not in names:
            raise InputError(f"{table} has no {VERTICES_COLUMN!r} column; use --targets rois")
        roi_defs = load_roi_set(roi_set)
        chosen = roi_defs.check_names(
            rois or [r for r in roi_defs.names if not r.startswith(("lh_", "rh_"))])
        rng = np.random.default_rng(seed)
        picks = {roi: np.sort(rng.choice(roi_defs.indices[roi],
                                         min(max_vertices, roi_defs.indices[roi].size),
                                         replace=False)) for roi in chosen}
        ids, blocks = [], {roi: [] for roi in chosen}
        for batch in iter_batches(table, columns=[IMAGE_ID, VERTICES_COLUMN], batch_size=1024):
            responses_bv = decode_vertices(batch.column(VERTICES_COLUMN), dtype=np.float32)
            ids.extend(str(i) for i in batch.column(IMAGE_ID).to_pylist())
            for roi in chosen:
                blocks[roi].append(responses_bv[:, picks[roi]])
        keys = pd.Index(ids)
        targets = {}
        for roi in chosen:
            frame = pd.DataFrame(np.concatenate(blocks[roi]).astype(np.float64), index=keys)
            targets[roi] = frame.groupby(level=0, sort=False).mean().to_numpy()
        image_ids = pd.unique(keys).astype(str).tolist()
    ceilings = {}
    if ceiling is not None:
        values = read_json(ceiling)
        if not isinstance(values, dict):
            raise InputError(f"{ceiling}: expected a JSON object {{ROI: ceiling}}")
        ceilings = {roi_names([str(k)])[0]: float(v) for k, v in values.items()}
    return BrainTargets(image_ids, targets, ceilings)


@dataclass
class ScanTargets:
    """What every layer is compared with, aligned to one order of image ids.

    Attributes
    ----------
    memorability_ids : list of str
        Images with a memorability score, in the order of ``memorability``.
    memorability : ndarray or None
        ``(M,)`` scores, or None (no read-out).
    splits : dict
        Read-out splits (positions in ``memorability``), see :func:`readout_splits`.
    brain : BrainTargets or None
    seed : int
        Seed of the read-outs' splits.
    """

    memorability_ids: list[str]
    memorability: np.ndarray | None
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    brain: BrainTargets | None
    seed: int = 0


def scan_targets(rows: pd.DataFrame, brain: BrainTargets | None, seed: int) -> ScanTargets:
    """Memorability read-out targets of ``rows`` (when at least :data:`MIN_SCORED` have a
    score) and the brain targets of the same images, category labels attached."""
    memorability_ids, memorability, splits = [], None, {}
    if MEMORABILITY in rows and rows[MEMORABILITY].notna().sum() >= MIN_SCORED:
        scored = rows[rows[MEMORABILITY].notna()].reset_index(drop=True)
        memorability_ids = scored[IMAGE_ID].astype(str).tolist()
        memorability = scored[MEMORABILITY].to_numpy(np.float64)
        splits = readout_splits(scored, seed)
    if brain is not None:
        brain = brain.restrict(rows[IMAGE_ID].astype(str).tolist())
        labels = category_labels(rows)
        if labels is not None:
            by_id = dict(zip(rows[IMAGE_ID].astype(str), labels, strict=True))
            brain.categories = np.array([by_id.get(i) for i in brain.image_ids], dtype=object)
    return ScanTargets(memorability_ids, memorability, splits, brain, seed)
