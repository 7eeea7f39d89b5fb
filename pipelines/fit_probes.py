"""Fit CLIP linear probes of brain responses (a score table's vertices or NSD betas).

Two kinds of targets:

- ``--targets vertices`` (default): distil an encoder into a CLIP proxy. TABLE is a score table
  written with ``--keep-vertices``; its ``vertices`` are the targets and its ``source`` column
  names the images.
- ``--targets nsd``: real fMRI. The targets are NSD single-trial betas of ``--subject`` on
  fsaverage (``--sessions``), z-scored per session and averaged over each image's repetitions
  (:mod:`neuromem.probes.nsd_betas`); the images are NSD's (``nsd_stimuli.hdf5``), matched on
  ``nsdId``. TABLE is optional here: without it the images are listed from ``--nsd-root``.

CLIP image features are computed by a Ray Data actor pool (GPU actors when the cluster has
GPUs), with exactly the preprocessing of the ``clip-probe`` encoder. A random held-out part of the
images (``--test-fraction``) is set aside; on the rest one ridge regression per vertex is fitted
(himalaya ``RidgeCV``, alpha per vertex by ``--folds``-fold cross-validation, torch backend on a
GPU when present). Outputs in ``--out``:

- ``probe.safetensors``: the probe, loadable with ``load_encoder("clip-probe:OUT/probe.safetensors")``;
- ``r2.json``: ``summary`` (median/mean held-out vertex R², median alpha), ``rois`` (per ROI:
  ``r2`` of the ROI mean of the probe's vertex predictions against the ROI mean of the
  targets, i.e. the ROI response the probe serves; ``mean_vertex_r2``; for NSD
  ``mean_noise_ceiling`` and ``mean_vertex_r2_normalised``), ``vertices`` (20,484-long lists
  ``r2``, ``cv_r2``, ``alpha``, and for NSD ``noise_ceiling`` in % and ``r2_normalised`` =
  ``100 · R² / NC``), ``training`` (data, split, folds, alpha grid, backend), ``model``;
- ``r2_vertices.png`` (and ``r2_normalised.png`` for NSD): surface maps;
- ``errors.parquet``: images that could not be read or decoded (left out of the fit).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from neuromem.errors import InputError
from neuromem.probes.features import ClipModelSpec, build_feature_encoder, image_features
from neuromem.probes.fit import ProbeFit, fit_probe
from neuromem.probes.image_map import ERROR, ROW, decode_batch, failed_rows, map_images
from neuromem.probes.ridge import DEFAULT_ALPHAS, default_backend, r2_columns, train_test_indices

log = logging.getLogger(__name__)

PROBE_FILE = "probe.safetensors"
R2_FILE = "r2.json"
ERRORS_FILE = "errors.parquet"
FEATURES = "features"


class FeatureActor:
    """Ray actor: payloads → CLIP features ``(B, E)`` (zeros and an ``error`` where decoding failed).

    Parameters
    ----------
    model : dict
        :class:`ClipModelSpec` fields.
    """

    def __init__(self, model: dict[str, Any]) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = build_feature_encoder(ClipModelSpec(**model), device)
        self.embed_dim = self.encoder.head.in_features

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels, errors = decode_batch(batch, self.encoder.input_size)
        ok = [i for i, image in enumerate(pixels) if image is not None]
        features_be = np.zeros((batch.num_rows, self.embed_dim), dtype=np.float32)
        if ok:
            images_b3hw = torch.from_numpy(np.stack([pixels[i] for i in ok])).permute(0, 3, 1, 2)
            features_be[ok] = image_features(self.encoder, images_b3hw.float() / 255.0)
        return {
            ROW: batch.column(ROW).to_numpy(),
            FEATURES: features_be,
            ERROR: np.array(errors, dtype=object),
        }


def compute_features(
    rows: pd.DataFrame, model: ClipModelSpec, *, batch_size: int, n_actors: int,
    gpus_per_actor: float | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """CLIP features of the images of ``rows`` (a Ray Data job).

    Returns
    -------
    features_ne : numpy.ndarray
        ``(N, E)`` float32 (zeros for failed rows).
    ok_n : numpy.ndarray
        ``(N,)`` bool, rows whose image was read and decoded.
    errors : pandas.DataFrame
        ``image_id``, ``source``, ``stage``, ``error`` of the failed rows.
    """
    results = map_images(
        rows, FeatureActor, {"model": model.to_dict()}, batch_size=batch_size,
        n_actors=n_actors, gpus_per_actor=gpus_per_actor,
    )
    features_ne = np.stack(results[FEATURES].to_numpy()).astype(np.float32)
    return features_ne, results[ERROR].isna().to_numpy(), failed_rows(rows, results, "features")


# ---------------------------------------------------------------------------------------------
# targets


def vertex_targets(table: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (``image_id``, ``dataset``, ``source``) and ``(N, 20484)`` float32 vertex targets."""
    from neuromem.scoring.table import VERTICES_COLUMN, decode_vertices, open_table

    dataset = open_table(table)
    if VERTICES_COLUMN not in dataset.schema.names:
        raise InputError(
            f"score table {table!r} has no {VERTICES_COLUMN!r} column; score it with "
            "--keep-vertices, or fit to NSD betas with --targets nsd"
        )
    data = dataset.to_table(columns=["image_id", "dataset", "source", VERTICES_COLUMN])
    targets_nv = decode_vertices(data.column(VERTICES_COLUMN), dtype=np.float32)
    rows = data.drop_columns([VERTICES_COLUMN]).to_pandas()
    finite = np.isfinite(targets_nv).all(axis=1)
    if not finite.all():
        log.warning("dropping %d rows with non-finite vertices", int((~finite).sum()))
    return rows[finite].reset_index(drop=True), targets_nv[finite]


def nsd_targets(
    table: str | None, root: str, subject: int, sessions: list[int], trials_per_session: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, betas ``(N, 20484)``, repetitions ``(N,)`` and noise ceiling ``(20484,)`` in %."""
    from neuromem.probes import nsd_betas

    nsd_ids_m, betas_mv, n_reps_m = nsd_betas.read_subject(
        root, subject, sessions, trials_per_session=trials_per_session
    )
    if table is None:
        from neuromem.data.readers import list_rows

        rows = list_rows("nsd", root)
    else:
        from neuromem.scoring.table import VERTICES_COLUMN, open_table

        dataset = open_table(table)
        columns = [c for c in dataset.schema.names if c != VERTICES_COLUMN]
        rows = dataset.to_table(columns=columns).to_pandas()
    if "nsdId" not in rows.columns:
        raise InputError("NSD targets need an 'nsdId' column in the image table (NSD listing)")
    rows = rows.drop_duplicates("nsdId")
    position = pd.Series(np.arange(len(nsd_ids_m)), index=nsd_ids_m)
    rows = rows[rows["nsdId"].isin(position.index)].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"none of the images with betas of subject {subject} is in the table")
    keep = position.loc[rows["nsdId"].to_numpy(np.int64)].to_numpy()
    ceiling_v = nsd_betas.noise_ceiling(nsd_betas.read_ncsnr(root, subject), n_reps_m[keep])
    return rows, betas_mv[keep], n_reps_m[keep], ceiling_v


# ---------------------------------------------------------------------------------------------
# report


def _finite_or_none(values) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _nanmedian(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def r2_report(
    fit: ProbeFit,
    targets_test_tv: np.ndarray,
    roi_spec: str,
    ceiling_v: np.ndarray | None,
) -> dict[str, Any]:
    """Per-vertex and per-ROI held-out scores as a JSON-ready dict."""
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set

    roi_set = load_roi_set(roi_spec)
    reducer = RoiReducer(roi_set)
    roi_r2 = r2_columns(reducer(targets_test_tv), reducer(fit.predictions_tv))
    normalised_v = None
    if ceiling_v is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised_v = np.where(ceiling_v > 0, 100.0 * fit.test_r2_v / ceiling_v, np.nan)
    rois = []
    for r, name in enumerate(reducer.names):
        indices = roi_set.indices[name]
        rois.append({
            "roi": name,
            "n_vertices": int(indices.size),
            "r2": _finite_or_none([roi_r2[r]])[0],
            "mean_vertex_r2": _nanmean(fit.test_r2_v[indices]),
            "mean_noise_ceiling": None if ceiling_v is None else _nanmean(ceiling_v[indices]),
            "mean_vertex_r2_normalised": (
                None if normalised_v is None else _nanmean(normalised_v[indices])
            ),
        })
    return {
        "summary": {
            "median_vertex_r2": _nanmedian(fit.test_r2_v),
            "mean_vertex_r2": _nanmean(fit.test_r2_v),
            "median_alpha": float(np.median(fit.alphas_v)),
            "median_vertex_r2_normalised": (
                None if normalised_v is None else _nanmedian(normalised_v)
            ),
        },
        "rois": rois,
        "vertices": {
            "r2": _finite_or_none(fit.test_r2_v),
            "cv_r2": _finite_or_none(fit.cv_r2_v),
            "alpha": _finite_or_none(fit.alphas_v),
            "noise_ceiling": None if ceiling_v is None else _finite_or_none(ceiling_v),
            "r2_normalised": None if normalised_v is None else _finite_or_none(normalised_v),
        },
        "roi_set": roi_spec,
    }


def plot_maps(report: dict[str, Any], out: Path, roi_spec: str) -> list[Path]:
    """Surface maps of the held-out R² (and of its ceiling-normalised version)."""
    from neuromem.cortex.plotting import plot_surface_map
    from neuromem.cortex.rois import load_roi_set

    roi_set = load_roi_set(roi_spec)
    maps = [("r2", "r2_vertices.png", "held-out R²"),
            ("r2_normalised", "r2_normalised.png", "held-out R², % of noise ceiling")]
    written = []
    for key, name, title in maps:
        values = report["vertices"][key]
        if values is None:
            continue
        values_v = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if not np.isfinite(values_v).any():
            continue
        written.append(plot_surface_map(
            values_v, out / name, roi_set=roi_set, title=title, cmap="inferno", symmetric=False,
        ))
    return written


# ---------------------------------------------------------------------------------------------
# command


def _alphas(text: str | None) -> np.ndarray:
    if text is None:
        return DEFAULT_ALPHAS
    try:
        return np.array([float(v) for v in text.split(",") if v.strip()], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"--alphas must be comma-separated numbers, got {text!r}") from exc


def _sessions(text: str) -> list[int]:
    sessions: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            sessions.extend(range(int(first), int(last or first) + 1))
    except ValueError as exc:
        raise InputError(f"--sessions must look like '1-3,5', got {text!r}") from exc
    return sessions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem fit-probes``."""
    parser.add_argument("table", nargs="?", default=None,
                        help="score table (Parquet) naming the images; with --targets vertices "
                             "it needs a 'vertices' column")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--targets", choices=["vertices", "nsd"], default="vertices",
                        help="what to fit: the table's vertices (distillation) or NSD betas")
    parser.add_argument("--model", default="ViT-B-32",
                        help="open_clip model name, or 'tiny' (seeded-random test model)")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip pretrained tag or local weight file; '' for random weights")
    parser.add_argument("--feature-norm", choices=["l2", "none"], default="l2",
                        help="normalise CLIP embeddings before the probe (default l2)")
    parser.add_argument("--nsd-root", default=None, help="NSD root (with --targets nsd)")
    parser.add_argument("--subject", type=int, default=1, help="NSD subject 1-8")
    parser.add_argument("--sessions", default="1", help="NSD sessions, e.g. '1-40'")
    parser.add_argument("--trials-per-session", type=int, default=750,
                        help="trials per NSD session file (750 in NSD)")
    parser.add_argument("--alphas", default=None,
                        help="comma-separated ridge alphas (default: 17 values 1e-2..1e6)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of images held out for R² (default 0.2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, the folds and random tower weights")
    parser.add_argument("--rois", default="default", help="ROI set for per-ROI R²")
    parser.add_argument("--batch-size", type=int, default=64, help="images per actor call")
    parser.add_argument("--actors", type=int, default=1, help="feature actors")
    parser.add_argument("--targets-batch", type=int, default=None,
                        help="vertices solved at once by the ridge (bounds memory)")
    parser.add_argument("--no-plots", action="store_true", help="skip the surface-map PNGs")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")


def run(args: argparse.Namespace) -> int:
    """Compute features, fit the probes, write the probe file and the R² report."""
    import ray

    from neuromem.encoders.clip_probe import save_clip_probe

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = args.pretrained
    if pretrained and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())
    model = ClipModelSpec(args.model, pretrained, args.seed, args.feature_norm)
    model.validate()

    ceiling_v = None
    if args.targets == "vertices":
        if args.table is None:
            raise InputError("--targets vertices needs a score TABLE with a 'vertices' column")
        rows, targets_nv = vertex_targets(args.table)
        source: dict[str, Any] = {"table": str(args.table)}
    else:
        if args.nsd_root is None:
            raise InputError("--targets nsd needs --nsd-root")
        sessions = _sessions(args.sessions)
        rows, targets_nv, n_reps_n, ceiling_v = nsd_targets(
            args.table, args.nsd_root, args.subject, sessions, args.trials_per_session
        )
        source = {"nsd_root": str(args.nsd_root), "subject": args.subject, "sessions": sessions,
                  "betas": "betas_fithrf_GLMdenoise_RR (fsaverage), z-scored per session",
                  "mean_repetitions": float(n_reps_n.mean())}

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False)
    features_ne, ok_n, errors = compute_features(
        rows, model, batch_size=args.batch_size, n_actors=args.actors
    )
    if len(errors):
        errors.to_parquet(out / ERRORS_FILE, index=False)
    rows, features_ne, targets_nv = rows[ok_n].reset_index(drop=True), features_ne[ok_n], targets_nv[ok_n]
    train_idx, test_idx = train_test_indices(len(rows), args.test_fraction, args.seed)
    alphas = _alphas(args.alphas)
    backend = default_backend()
    fit = fit_probe(
        features_ne, targets_nv, train_idx, test_idx, alphas=alphas, n_folds=args.folds,
        seed=args.seed, backend=backend, n_targets_batch=args.targets_batch,
    )
    report = r2_report(fit, targets_nv[test_idx], args.rois, ceiling_v)
    training = {
        "trained": True,
        "targets": args.targets,
        **source,
        "n_train": int(train_idx.size),
        "n_test": int(test_idx.size),
        "n_failed": int(len(errors)),
        "folds": args.folds,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "alphas_grid": [float(a) for a in alphas],
        "ridge": "himalaya.ridge.RidgeCV(solver='svd', local_alpha=True), features z-scored on "
                 "the training images then folded into the weights",
        "himalaya_backend": backend,
        "summary": report["summary"],
    }
    probe_path = save_clip_probe(
        out / PROBE_FILE,
        torch.from_numpy(fit.weight_ve),
        torch.from_numpy(fit.bias_v),
        model_name=model.open_clip_name,
        pretrained=model.pretrained,
        feature_norm=model.feature_norm,
        training=training,
        tower_seed=model.seed,
        model_config=model.model_config,
    )
    record = {"probe": str(probe_path), "encoder_spec": f"clip-probe:{probe_path.resolve()}",
              "model": model.to_dict(), "training": training, **report}
    (out / R2_FILE).write_text(json.dumps(record, indent=1, allow_nan=False))
    if not args.no_plots:
        plot_maps(report, out, args.rois)
    print(
        f"fit-probes: {len(rows)} images ({train_idx.size} train, {test_idx.size} held out, "
        f"{len(errors)} failed), median held-out vertex R² {report['summary']['median_vertex_r2']}, "
        f"{time.perf_counter() - start:.1f} s\nprobe: {probe_path}\nreport: {out / R2_FILE}"
    )
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
