"""Scan every layer of image models: memorability read-out and brain similarity per layer (Ray).

For each model (``timm:NAME``, ``torchvision:NAME``, ``open_clip:NAME``, ``memnet:CHECKPOINT``,
optionally ``@WEIGHTS``; see :mod:`neuromem.representations.layers`):

1. **Extraction** (Ray Data): the table's images are read and decoded, and an actor pool (GPU
   per actor when the cluster has GPUs) runs the model with forward hooks that pool every layer
   to a fixed size. Each actor writes every batch as one Parquet part of
   ``OUT/features/<model>/``: column ``image_id`` plus one ``fixed_size_binary(4·K)`` column per
   layer holding the ``K`` pooled values as raw little-endian float32. Nothing but a summary
   row per batch returns to the driver, so memory is bounded by the batch size whatever the
   number of layers and images. ``layers.json`` there lists the layers (name, shape, K, depth).
2. **Analysis** (Ray tasks, one per layer): each task reads one layer column and computes
   - memorability: PLS (components chosen by 5-fold CV in the training rows, capped by the
     feature count), Spearman ρ on each LaMem test split (``train_k → test_k``; splits from the
     table's ``splits`` column or ``--lamem-root``; 5 random 80/20 splits when there is none):
     mean and standard deviation;
   - for each ROI of the brain table (``--brain``, matched by ``image_id``; rows of the same id
     are averaged): Brain-Score neural predictivity (PLS 25, 10 splits of 90/10, median over
     targets of the held-out Pearson r; divided by the ROI's ceiling from ``--ceiling``) and
     linear CKA. Targets are the ROI's vertices (``vertices`` column, up to ``--max-vertices``
     per ROI, seeded subsample) or the ROI's score column.
3. **Outputs**: ``OUT/layers.parquet`` (``model, layer, layer_index, depth_fraction,
   n_features, memorability_rho_mean, memorability_rho_std, memorability_rho_<split>,
   predictivity_<ROI>, [predictivity_ceiled_<ROI>], cka_<ROI>``), ``OUT/layers.png`` (seed 001's
   figure: memorability ρ against similarity to one ROI, every layer of every model) and, with
   ``--compare``, ``OUT/compare.parquet``: for each pair of models and each layer name they
   share, CKA between the two and the unique variance each explains beyond the other
   (median over targets of the partial correlation of the ROI's responses with one model's
   cross-validated PLS predictions, controlling for the other's; seed 002).

Example::

    neuromem layers --table scores/lamem --model timm:resnet50@/w/resnet50.safetensors \\
        --model memnet:runs/memnet_both --out scans/resnet50 --figure-roi FFA
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neuromem.cli import run_module
from neuromem.errors import InputError

logger = logging.getLogger(__name__)

TARGET_KINDS = ("auto", "vertices", "rois")
FEATURE_DTYPE = np.dtype("<f4")
MANIFEST = "layers.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem layers``."""
    parser.add_argument("--table", required=True,
                        help="score table (or Parquet of dataset rows) with image_id and source; "
                             "memorability and LaMem's splits column for the read-out")
    parser.add_argument("--model", action="append", required=True,
                        help="LIBRARY:NAME[@WEIGHTS], repeatable (timm, torchvision, open_clip, memnet)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--brain", default=None,
                        help="measured or predicted score table for brain similarity "
                             "(default: --table); rows matched by image_id")
    parser.add_argument("--targets", choices=TARGET_KINDS, default="auto",
                        help="brain targets per ROI: its vertices or its score column "
                             "(default auto: vertices when the brain table has them)")
    parser.add_argument("--roi", action="append", default=None,
                        help="ROI to compare with, repeatable (default: every bilateral ROI)")
    parser.add_argument("--rois", default="default", help="ROI set for vertex targets")
    parser.add_argument("--max-vertices", type=int, default=256,
                        help="most vertices per ROI used as targets (default: %(default)s)")
    parser.add_argument("--ceiling", default=None,
                        help="JSON file {ROI: ceiling}: also report ceiling-normalised predictivity")
    parser.add_argument("--lamem-root", default=None,
                        help="LaMem folder whose splits/ define the read-out splits "
                             "(default: the table's splits column)")
    parser.add_argument("--include", default=None, help="regex: keep only matching layer names")
    parser.add_argument("--grid", type=int, default=2, help="pooling grid side (default: 2)")
    parser.add_argument("--max-features", type=int, default=4096,
                        help="most values per layer before random projection (default: 4096)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in pixels (default: the model's)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--batch-size", type=int, default=32, help="images per actor batch")
    parser.add_argument("--actors", type=int, default=1, help="extraction actors (fixed pool)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="default: 1 when the cluster has GPUs, else 0")
    parser.add_argument("--compare", action="store_true",
                        help="also compare every pair of models layer by layer (CKA, unique variance)")
    parser.add_argument("--figure-roi", default=None,
                        help="ROI on the figure's x axis (default: LOC if present, else the first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, projections, splits")
    parser.add_argument("--address", default=None, help="Ray address (default: local Ray)")


# ----------------------------------------------------------------------------------------------
# Inputs


def read_rows(table: str, *, lamem_root: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Image rows (``image_id``, ``source`` and, when present, ``memorability``, ``splits``,
    ``category``) of a table, one per image id, in table order."""
    from neuromem.scoring.table import open_table

    dataset = open_table(table)
    wanted = [c for c in ("image_id", "source", "memorability", "splits", "category")
              if c in dataset.schema.names]
    if "image_id" not in wanted or "source" not in wanted:
        raise InputError(f"{table}: expected columns image_id and source; has {dataset.schema.names}")
    rows = dataset.to_table(columns=wanted).to_pandas().drop_duplicates("image_id")
    if lamem_root is not None:
        from neuromem.data.lamem import list_lamem

        splits = list_lamem(lamem_root).set_index("image_id")["splits"]
        rows["splits"] = rows["image_id"].map(splits)
    rows = rows.reset_index(drop=True)
    return rows.iloc[:limit].reset_index(drop=True) if limit is not None else rows


def readout_splits(rows: pd.DataFrame, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LaMem's ``train_k → test_k`` splits of the rows with a memorability score, else 5 random
    80/20 splits; indices are positions among those rows."""
    from neuromem.representations.readout import lamem_splits

    scored = rows[rows["memorability"].notna()]
    if "splits" in scored and scored["splits"].notna().any():
        splits = lamem_splits(scored["splits"].tolist())
        if splits:
            return splits
    rng = np.random.default_rng(seed)
    n = len(scored)
    splits = {}
    for k in range(1, 6):
        order = rng.permutation(n)
        n_test = max(1, n // 5)
        splits[f"random_{k}"] = (np.sort(order[n_test:]), np.sort(order[:n_test]))
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
    """

    image_ids: list[str]
    targets: dict[str, np.ndarray]
    ceilings: dict[str, float] = field(default_factory=dict)


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
    """Read a measured or predicted score table's responses per ROI, averaged per image id."""
    from neuromem.scoring.table import (
        VERTICES_COLUMN,
        decode_vertices,
        iter_batches,
        open_table,
        roi_columns,
    )

    dataset = open_table(table)
    names = dataset.schema.names
    if kind == "auto":
        kind = "vertices" if VERTICES_COLUMN in names else "rois"
    if kind == "rois":
        available = [c[len("roi_"):] for c in roi_columns(dataset.schema)]
        chosen = rois or [r for r in available if not r.startswith(("lh_", "rh_"))]
        missing = [r for r in chosen if r not in available]
        if missing or not chosen:
            raise InputError(f"{table}: no ROI column(s) {missing or chosen}; it has {available}")
        frame = dataset.to_table(columns=["image_id", *[f"roi_{r}" for r in chosen]]).to_pandas()
        frame = frame.groupby("image_id", sort=False).mean()
        targets = {r: frame[f"roi_{r}"].to_numpy(np.float64)[:, None] for r in chosen}
        image_ids = frame.index.astype(str).tolist()
    else:
        from neuromem.cortex.rois import load_roi_set

        if VERTICES_COLUMN not in names:
            raise InputError(f"{table} has no {VERTICES_COLUMN!r} column; use --targets rois")
        roi_defs = load_roi_set(roi_set)
        chosen = roi_defs.check_names(
            rois or [r for r in roi_defs.names if not r.startswith(("lh_", "rh_"))]
        )
        rng = np.random.default_rng(seed)
        picks = {}
        for roi in chosen:
            indices = roi_defs.indices[roi]
            picks[roi] = np.sort(rng.choice(indices, min(max_vertices, indices.size), replace=False))
        ids, blocks = [], {roi: [] for roi in chosen}
        for batch in iter_batches(table, columns=["image_id", VERTICES_COLUMN], batch_size=1024):
            responses_bv = decode_vertices(batch.column(VERTICES_COLUMN), dtype=np.float32)
            ids.extend(batch.column("image_id").to_pylist())
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
        ceilings = {str(k): float(v) for k, v in json.loads(Path(ceiling).read_text()).items()}
    return BrainTargets(image_ids, targets, ceilings)


# ----------------------------------------------------------------------------------------------
# Extraction (Ray Data actor pool)


def model_slug(spec: str) -> str:
    """A folder name for a model spec."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_")


def layer_column_type(n_features: int) -> pa.DataType:
    """Arrow type of a layer column: ``fixed_size_binary(4 · n_features)``."""
    return pa.binary(n_features * FEATURE_DTYPE.itemsize)


def features_to_arrow(values_bk: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Encode ``(B, K)`` features as a layer column (raw little-endian float32 per row)."""
    raw = np.ascontiguousarray(values_bk, dtype=FEATURE_DTYPE)
    return pa.FixedSizeBinaryArray.from_buffers(
        layer_column_type(raw.shape[1]), len(raw), [None, pa.py_buffer(raw)]
    )


def arrow_to_features(column: pa.ChunkedArray | pa.Array, n_features: int) -> np.ndarray:
    """Decode a layer column to ``(N, K)`` float32."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [
        np.frombuffer(
            c.buffers()[1], FEATURE_DTYPE, len(c) * n_features,
            offset=c.offset * n_features * FEATURE_DTYPE.itemsize,
        ).reshape(len(c), n_features)
        for c in chunks if len(c)
    ]
    return np.concatenate(parts) if parts else np.empty((0, n_features), np.float32)


class FeatureActor:
    """Actor of the extraction pool: decode a batch, run the model with hooks, write one part."""

    def __init__(self, spec: str, image_size: int | None, grid: int, max_features: int,
                 seed: int, layers: list[dict], out: str) -> None:
        import torch

        from neuromem.networks import load_model
        from neuromem.representations.layers import LayerExtractor, LayerInfo, Pooling

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(spec, image_size=image_size, seed=seed)
        model.module.to(self.device)
        infos = [LayerInfo(**{**d, "shape": tuple(d["shape"])}) for d in layers]
        self.extractor = LayerExtractor(model, Pooling(grid, max_features, seed), infos)
        self.size = model.image_size
        self.out = out

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from neuromem.data.decode import decode_image

        start = time.perf_counter()
        pixels = np.stack([
            decode_image(p, m, self.size)
            for p, m in zip(batch.column("payload").to_pylist(),
                            batch.column("media").to_pylist(), strict=True)
        ])
        images_b3hw = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        outputs = self.extractor(images_b3hw)
        columns = {"image_id": batch.column("image_id")}
        for name, values_bk in outputs.items():
            columns[name] = features_to_arrow(values_bk.cpu().numpy())
        write_part(pa.table(columns), self.out)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return pa.table({"rows": [batch.num_rows], "seconds": [time.perf_counter() - start],
                         "peak_rss_mb": [peak_mb]})


def write_part(table: pa.Table, folder: str) -> str:
    """Write one Parquet part atomically (temporary name, then rename); return its path."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = os.path.join(folder, f".{name}.tmp")
    pq.write_table(table, tmp, compression="none", row_group_size=max(1, table.num_rows))
    os.replace(tmp, os.path.join(folder, name))
    return name


@dataclass
class ExtractionSummary:
    """What one extraction did: rows, layers, wall time and the actors' peak memory."""

    model: str
    folder: str
    rows: int
    layers: int
    wall_s: float
    actor_seconds: float
    actor_peak_rss_mb: float


def extract_features(
    spec: str,
    rows: pd.DataFrame,
    folder: str,
    *,
    image_size: int | None = None,
    grid: int = 2,
    max_features: int = 4096,
    include: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    actors: int = 1,
    gpus_per_actor: float | None = None,
) -> ExtractionSummary:
    """Extract every layer of one model for ``rows`` into a Parquet feature folder (Ray Data).

    The layers are discovered in the driver (one dummy forward pass on the CPU) and written to
    ``folder/layers.json``; actors write the parts. Ray must be initialised.
    """
    import ray

    from neuromem.data.readers import load_payloads
    from neuromem.networks import load_model
    from neuromem.representations.layers import LayerExtractor, Pooling, depth_fractions

    start = time.perf_counter()
    model = load_model(spec, image_size=image_size, seed=seed)
    extractor = LayerExtractor(model, Pooling(grid, max_features, seed), include=include)
    layers = [layer.to_dict() for layer in extractor.layers]
    extractor.remove()
    del model, extractor
    os.makedirs(folder, exist_ok=True)
    for stale in Path(folder).glob("*.parquet"):
        stale.unlink()
    fractions = depth_fractions(len(layers))
    manifest = {"model": spec, "image_size": image_size, "grid": grid,
                "max_features": max_features, "seed": seed,
                "layers": [{**d, "depth_fraction": float(f)} for d, f in zip(layers, fractions, strict=True)]}
    Path(folder, MANIFEST).write_text(json.dumps(manifest, indent=1))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    listing = rows[["image_id", "source"]].astype(str).reset_index(drop=True)
    table = pa.Table.from_pandas(listing, preserve_index=False)
    blocks = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        load_payloads, batch_size=batch_size, batch_format="pyarrow"
    ).map_batches(
        FeatureActor,
        fn_constructor_kwargs={"spec": spec, "image_size": image_size, "grid": grid,
                               "max_features": max_features, "seed": seed, "layers": layers,
                               "out": os.path.abspath(folder)},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor,
        batch_size=batch_size,
        batch_format="pyarrow",
    )
    summary = ds.to_pandas()
    return ExtractionSummary(
        spec, folder, int(summary["rows"].sum()), len(layers), time.perf_counter() - start,
        float(summary["seconds"].sum()), float(summary["peak_rss_mb"].max()),
    )


def read_layer(folder: str, layer: str, n_features: int) -> tuple[list[str], np.ndarray]:
    """Image ids and ``(N, K)`` float32 features of one layer from a feature folder."""
    parts = sorted(str(p) for p in Path(folder).glob("part-*.parquet"))
    table = pq.read_table(parts, columns=["image_id", layer])
    return table.column("image_id").to_pylist(), arrow_to_features(table.column(layer), n_features)


# ----------------------------------------------------------------------------------------------
# Analysis (one Ray task per layer)


@dataclass
class ScanTargets:
    """What every layer is compared with, aligned to one order of image ids."""

    memorability_ids: list[str]
    memorability: np.ndarray | None
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    brain: BrainTargets | None
    seed: int = 0


def _rows_of(ids: list[str], wanted: list[str]) -> np.ndarray:
    position = {image_id: i for i, image_id in enumerate(ids)}
    missing = [w for w in wanted if w not in position]
    if missing:
        raise InputError(f"{len(missing)} images have no features (e.g. {missing[:3]})")
    return np.array([position[w] for w in wanted], dtype=np.int64)


def analyse_layer(folder: str, layer: dict, targets: ScanTargets) -> dict:
    """Memorability read-out and brain similarity of one layer (see the module docstring)."""
    from neuromem.representations.cka import linear_cka
    from neuromem.representations.readout import memorability_readout, neural_predictivity

    ids, x_nf = read_layer(folder, layer["name"], layer["n_features"])
    x_nf = x_nf.astype(np.float64)
    result = {"layer": layer["name"], "layer_index": layer["index"],
              "depth_fraction": layer["depth_fraction"], "n_features": layer["n_features"]}
    if targets.memorability is not None:
        x_mem = x_nf[_rows_of(ids, targets.memorability_ids)]
        readout = memorability_readout(x_mem, targets.memorability, targets.splits,
                                       seed=targets.seed)
        result["memorability_rho_mean"] = readout.mean
        result["memorability_rho_std"] = readout.std
        for split, rho in readout.rho_per_split.items():
            result[f"memorability_rho_{split}"] = rho
    if targets.brain is not None:
        x_brain = x_nf[_rows_of(ids, targets.brain.image_ids)]
        for roi, y_nt in targets.brain.targets.items():
            score = neural_predictivity(x_brain, y_nt, ceiling_t=(
                None if roi not in targets.brain.ceilings
                else np.array([targets.brain.ceilings[roi]])), seed=targets.seed)
            result[f"predictivity_{roi}"] = score.raw
            if score.normalised is not None:
                result[f"predictivity_ceiled_{roi}"] = score.normalised
            result[f"cka_{roi}"] = linear_cka(x_brain, y_nt)
    return result


def compare_layer(folder_a: str, folder_b: str, layer: dict, targets: ScanTargets) -> dict:
    """CKA between two models at one layer and the unique variance each explains beyond the
    other, per ROI (median over targets of the partial correlation)."""
    from neuromem.representations.cka import linear_cka
    from neuromem.representations.readout import cross_validated_predictions, unique_variance

    ids_a, x_a = read_layer(folder_a, layer["name"], layer["n_features"])
    ids_b, x_b = read_layer(folder_b, layer["name"], layer["n_features"])
    x_b = x_b[_rows_of(ids_b, ids_a)]
    result = {"layer": layer["name"], "layer_index": layer["index"],
              "depth_fraction": layer["depth_fraction"],
              "cka": linear_cka(x_a.astype(np.float64), x_b.astype(np.float64))}
    if targets.brain is not None:
        rows = _rows_of(ids_a, targets.brain.image_ids)
        for roi, y_nt in targets.brain.targets.items():
            pred_a = cross_validated_predictions(x_a[rows].astype(np.float64), y_nt, seed=targets.seed)
            pred_b = cross_validated_predictions(x_b[rows].astype(np.float64), y_nt, seed=targets.seed)
            result[f"unique_a_{roi}"] = float(np.nanmedian(unique_variance(y_nt, pred_a, pred_b)))
            result[f"unique_b_{roi}"] = float(np.nanmedian(unique_variance(y_nt, pred_b, pred_a)))
    return result


# ----------------------------------------------------------------------------------------------
# Figure


def plot_scan(table: pd.DataFrame, roi: str, path: str) -> None:
    """Seed 001's figure: memorability ρ against similarity to ``roi`` for every layer.

    Left: neural predictivity; right: CKA. One colour per model; marker size grows with depth.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [c for c in (f"predictivity_{roi}", f"cka_{roi}") if c in table]
    fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4.5), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for model, part in table.groupby("model", sort=False):
            ok = part[[measure, "memorability_rho_mean"]].dropna()
            r = np.corrcoef(ok[measure], ok["memorability_rho_mean"])[0, 1] if len(ok) > 2 else np.nan
            ax.scatter(part[measure], part["memorability_rho_mean"],
                       s=8 + 40 * part["depth_fraction"], alpha=0.7,
                       label=f"{model} (r = {r:.2f}, {len(part)} layers)")
        kind = "neural predictivity (median r)" if measure.startswith("pred") else "linear CKA"
        ax.set_xlabel(f"{roi}: {kind}")
        ax.set_ylabel("memorability, Spearman ρ (PLS, mean over splits)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Layers: memorability prediction vs brain similarity (marker size: depth)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Command


def run(args: argparse.Namespace) -> int:
    """Extract, analyse and write the layer table, the figure and (``--compare``) the pairs."""
    import ray

    from neuromem.scoring.job import init_ray

    rows = read_rows(args.table, lamem_root=args.lamem_root, limit=args.limit)
    memorability_ids, memorability, splits = [], None, {}
    if "memorability" in rows and rows["memorability"].notna().sum() >= 10:
        scored = rows[rows["memorability"].notna()]
        memorability_ids = scored["image_id"].astype(str).tolist()
        memorability = scored["memorability"].to_numpy(np.float64)
        splits = readout_splits(rows, args.seed)
    brain = read_brain_targets(
        args.brain or args.table, kind=args.targets, rois=args.roi, roi_set=args.rois,
        max_vertices=args.max_vertices, ceiling=args.ceiling, seed=args.seed,
    )
    keep = set(rows["image_id"].astype(str))
    brain_rows = [i for i, image_id in enumerate(brain.image_ids) if image_id in keep]
    if len(brain_rows) < 10:
        raise InputError(f"only {len(brain_rows)} images of the brain table are in --table")
    brain = BrainTargets([brain.image_ids[i] for i in brain_rows],
                         {r: y[brain_rows] for r, y in brain.targets.items()}, brain.ceilings)
    targets = ScanTargets(memorability_ids, memorability, splits, brain, args.seed)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = init_ray(args.address)
    try:
        summaries, manifests = [], {}
        for spec in args.model:
            folder = str(out / "features" / model_slug(spec))
            summary = extract_features(
                spec, rows, folder, image_size=args.image_size, grid=args.grid,
                max_features=args.max_features, include=args.include, seed=args.seed,
                batch_size=args.batch_size, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
            )
            logger.info("%s: %d layers x %d images in %.1f s", spec, summary.layers,
                        summary.rows, summary.wall_s)
            summaries.append(summary.__dict__)
            manifests[spec] = (folder, json.loads(Path(folder, MANIFEST).read_text())["layers"])
        targets_ref = ray.put(targets)
        task = ray.remote(num_cpus=1)(analyse_layer)
        futures = {spec: [task.remote(folder, layer, targets_ref) for layer in layers]
                   for spec, (folder, layers) in manifests.items()}
        records = [{"model": spec, **r} for spec, fs in futures.items() for r in ray.get(fs)]
        table = pd.DataFrame.from_records(records)
        table.to_parquet(out / "layers.parquet", index=False)
        if args.compare:
            compare_models(manifests, targets_ref, out / "compare.parquet")
    finally:
        if started:
            ray.shutdown()
    rois = list(brain.targets)
    roi = args.figure_roi or ("LOC" if "LOC" in rois else rois[0])
    if memorability is not None:
        plot_scan(table, roi, str(out / "layers.png"))
    (out / "extraction.json").write_text(json.dumps(summaries, indent=1))
    print(f"{len(table)} layers of {len(args.model)} model(s) -> {out / 'layers.parquet'}")
    return 0


def compare_models(manifests: dict, targets_ref, path: Path) -> None:
    """Layer-by-layer comparison of every pair of models (shared layer names) to ``path``."""
    import ray

    task = ray.remote(num_cpus=1)(compare_layer)
    specs = list(manifests)
    futures, pairs = [], []
    for i, spec_a in enumerate(specs):
        for spec_b in specs[i + 1:]:
            folder_a, layers_a = manifests[spec_a]
            folder_b, layers_b = manifests[spec_b]
            shared = {layer["name"] for layer in layers_b}
            for layer in layers_a:
                if layer["name"] in shared:
                    futures.append(task.remote(folder_a, folder_b, layer, targets_ref))
                    pairs.append((spec_a, spec_b))
    if not futures:
        raise InputError("--compare needs at least two models that share layer names")
    records = [{"model_a": a, "model_b": b, **r}
               for (a, b), r in zip(pairs, ray.get(futures), strict=True)]
    pd.DataFrame.from_records(records).to_parquet(path, index=False)


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
