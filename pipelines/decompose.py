"""Decompose memorability by brain region: ROI and vertex correlations, category control, spin tests.

Reads one or more score tables (the first is the primary one; the others, e.g. BOLD5000
measurements or CLIP-probe predictions, are compared with it) and writes ``results.json``,
``report.md``, ``report.html`` and PNG figures to ``--out``. With ``--vertices`` the primary
table's ``vertices`` column is correlated with memorability vertex by vertex in one streaming
pass; with Ray (``--ray``, or when a Ray session is already running) that pass is a map-reduce
over the table's files. Run locally, or on a cluster with::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.decompose s3://bucket/lamem_tribev2 --out results/ --vertices --ray
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from neuromem.analysis.agreement import agreement_records, roi_agreement
from neuromem.analysis.correlation import N_BOOTSTRAP
from neuromem.analysis.report import (
    Block,
    plot_coherence_histograms,
    plot_roi_bars,
    plot_roi_scatter,
    write_report,
)
from neuromem.analysis.roi_stats import check_columns, roi_statistics
from neuromem.analysis.spin import spin_test
from neuromem.analysis.vertexwise import (
    VertexMoments,
    merge_all,
    roi_sign_coherence,
    vertex_moments,
)
from neuromem.errors import InputError, UnknownNameError
from neuromem.scoring.table import (
    VERTICES_COLUMN,
    open_table,
    read_metadata,
    roi_columns,
)

log = logging.getLogger(__name__)

RESULT_KEYS = (
    "roi",
    "n",
    "pearson_r",
    "pearson_ci",
    "pearson_p",
    "pearson_q",
    "spearman_r",
    "spearman_ci",
    "spearman_p",
    "partial_r",
    "partial_p",
    "partial_ci",
    "within_category",
    "frac_vertices_negative",
    "frac_vertices_positive",
    "spin_p_mean_r",
    "spin_p_coherence",
)
"""Keys of each ``rois`` record in ``results.json``, in order (a fixed contract)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem decompose``."""
    parser.add_argument(
        "tables",
        nargs="+",
        metavar="TABLE",
        help="score tables (directory, file or URI); the first is the primary one",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--memorability", default="memorability", help="memorability column (default: memorability)"
    )
    parser.add_argument(
        "--category",
        default=None,
        help="category column (default: 'category' when the table has it)",
    )
    parser.add_argument(
        "--covariates", default="", help="comma-separated numeric columns to control for as well"
    )
    parser.add_argument(
        "--vertices",
        action="store_true",
        help="vertex-level correlations, sign coherence and spin tests",
    )
    parser.add_argument(
        "--spins",
        type=int,
        default=1000,
        help="random rotations of the spin test (0: no spin test; default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of bootstraps and spins")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=N_BOOTSTRAP,
        help=f"resamples of the Spearman BCa interval (0: none; default {N_BOOTSTRAP})",
    )
    parser.add_argument(
        "--rois",
        default="default",
        help="ROI set giving each ROI's vertices: 'default' or a YAML file",
    )
    parser.add_argument(
        "--ray", action="store_true", help="run the vertex pass as Ray tasks, one per file"
    )
    parser.add_argument("--address", default=None, help="Ray address (default: start or find one)")


def _predictor_names(tables: list[str], metadata: list[dict]) -> list[str]:
    names = []
    for path, meta in zip(tables, metadata, strict=True):
        base = (meta.get("encoder") or {}).get("spec") or Path(str(path).rstrip("/")).name
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


def _vertex_moments_ray(dataset, memorability: str, address: str | None) -> VertexMoments:
    """Map: one Ray task per file computes its moments; reduce: merge on the driver."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    filesystem = dataset.filesystem

    @ray.remote(num_cpus=1)
    def file_moments(path: str) -> VertexMoments:
        return vertex_moments(path, memorability, filesystem=filesystem, n_threads=1)

    files = sorted(dataset.files)
    log.info("vertex pass: %d Ray tasks", len(files))
    return merge_all(ray.get([file_moments.remote(f) for f in files]))


def _use_ray(args) -> bool:
    if args.ray:
        return True
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _roi_vertex_indices(roi_spec: str, rois: list[str]) -> tuple[dict[str, np.ndarray], object]:
    from neuromem.cortex.rois import load_roi_set

    roi_set = load_roi_set(roi_spec)
    found = {r: roi_set.indices[r] for r in rois if r in roi_set.indices}
    return found, roi_set


def _versions(used_ray: bool) -> dict[str, str]:
    import pyarrow
    import scipy

    from neuromem import __version__

    out = {
        "neuromem": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
    }
    if used_ray:
        import ray

        out["ray"] = ray.__version__
    return out


def run(args: argparse.Namespace) -> int:
    """Compute the decomposition and write ``results.json`` and the report."""
    out_dir = Path(args.out)
    covariates = [c.strip() for c in args.covariates.split(",") if c.strip()]
    if args.spins < 0 or args.bootstrap < 0:
        raise InputError("--spins and --bootstrap must be >= 0")
    datasets = [open_table(t) for t in args.tables]
    metadata = [read_metadata(d) for d in datasets]
    primary = datasets[0]
    names = primary.schema.names
    category = args.category
    if category is None and "category" in names:
        category = "category"
    notes = []
    if args.category is None and category is None:
        notes.append("The table has no `category` column: no category control.")
    rois = roi_columns(primary.schema)
    if not rois:
        raise UnknownNameError(
            f"{args.tables[0]} has no ROI columns (roi_<NAME>); columns: {names}"
        )
    if args.vertices and VERTICES_COLUMN not in names:
        raise UnknownNameError(
            f"--vertices needs a {VERTICES_COLUMN!r} column in {args.tables[0]}; score the "
            "images with `neuromem score --vertices`"
        )

    # --- ROI statistics of every table -------------------------------------------------------
    frames, records = [], []
    for i, dataset in enumerate(datasets):
        table_rois = roi_columns(dataset.schema)
        cols = [args.memorability, *([category] if category else []), *covariates, *table_rois]
        check_columns(dataset.schema.names, cols, what=str(args.tables[i]))
        frame = dataset.to_table(columns=cols).to_pandas()
        frames.append(frame)
        log.info(
            "ROI statistics of %s (%d rows, %d ROIs)", args.tables[i], len(frame), len(table_rois)
        )
        records.append(
            roi_statistics(
                frame,
                table_rois,
                memorability=args.memorability,
                category=category,
                covariates=covariates,
                seed=args.seed,
                n_resamples=args.bootstrap,
            )
        )
    primary_records = records[0]

    # --- vertex level ------------------------------------------------------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    r_v = None
    used_ray = False
    roi_names = [r["roi"] for r in primary_records]
    if args.vertices:
        used_ray = _use_ray(args)
        if used_ray:
            moments = _vertex_moments_ray(primary, args.memorability, args.address)
        else:
            moments = vertex_moments(primary, args.memorability)
        r_v = moments.pearson_r()
        np.save(out_dir / "vertex_r.npy", r_v.astype(np.float32))
        roi_idx, roi_set = _roi_vertex_indices(args.rois, roi_names)
        table_rois_meta = metadata[0].get("rois") or {}
        table_hash = (
            table_rois_meta.get("indices_sha256") if isinstance(table_rois_meta, dict) else None
        )
        if table_hash and table_hash != roi_set.to_dict()["indices_sha256"]:
            notes.append(
                f"The ROI set `{args.rois}` differs from the one the table was scored with "
                f"({table_rois_meta.get('name')}): vertex statistics use `{args.rois}`."
            )
        missing = [r for r in roi_names if r not in roi_idx]
        if missing:
            notes.append(f"No vertices known for ROIs {missing} in ROI set `{args.rois}`.")
        coherence = roi_sign_coherence(r_v, roi_idx)
        spins = spin_test(r_v, roi_idx, n_spins=args.spins, seed=args.seed) if args.spins else {}
        for record in primary_records:
            roi = record["roi"]
            if roi in coherence:
                neg, pos = coherence[roi]
                record["frac_vertices_negative"] = None if np.isnan(neg) else neg
                record["frac_vertices_positive"] = None if np.isnan(pos) else pos
            if roi in spins:
                s = spins[roi]
                record["spin_p_mean_r"] = None if np.isnan(s.p_mean_r) else s.p_mean_r
                record["spin_p_coherence"] = None if np.isnan(s.p_coherence) else s.p_coherence
        from neuromem.cortex.plotting import plot_surface_map

        figures.append(
            (
                plot_surface_map(
                    r_v,
                    out_dir / "vertex_r.png",
                    roi_set=roi_set,
                    title=f"vertex r with {args.memorability}",
                ).name,
                "Vertex r with memorability (inflated fsaverage5)",
            )
        )
        if roi_idx:
            figures.append(
                (
                    plot_coherence_histograms(r_v, roi_idx, out_dir / "coherence.png").name,
                    "Vertex r within each ROI",
                )
            )

    # --- agreement ---------------------------------------------------------------------------
    predictors = _predictor_names(args.tables, metadata)
    agreement = []
    if len(datasets) > 1:
        agreement = agreement_records(roi_agreement(dict(zip(predictors, records, strict=True))))

    results = {
        "n_images": len(frames[0]),
        "memorability_column": args.memorability,
        "category_column": category,
        "seed": args.seed,
        "rois": [{k: rec[k] for k in RESULT_KEYS} for rec in primary_records],
        "agreement": agreement,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))

    figures.insert(
        0,
        (
            plot_roi_bars(
                primary_records,
                out_dir / "roi_bars.png",
                title=f"{predictors[0]}: ROI r with {args.memorability}",
            ).name,
            "ROI correlations with memorability (95 % CI; diamonds: partial r)",
        ),
    )
    figures.insert(
        1,
        (
            plot_roi_scatter(
                frames[0],
                rois,
                args.memorability,
                out_dir / "roi_scatter.png",
                category=category,
                seed=args.seed,
            ).name,
            "ROI response against memorability",
        ),
    )
    blocks = _report_blocks(
        args,
        results,
        primary_records,
        metadata,
        predictors,
        notes,
        figures,
        used_ray,
        category,
        covariates,
    )
    write_report(out_dir, blocks, title="neuromem decomposition")
    log.info("wrote %s", out_dir / "results.json")
    return 0


def _report_blocks(
    args, results, records, metadata, predictors, notes, figures, used_ray, category, covariates
) -> list[Block]:
    encoder = metadata[0].get("encoder") or {}
    blocks = [Block("h1", "Memorability decomposition")]
    if encoder.get("trained") is False:
        blocks.append(
            Block(
                "p",
                "WARNING: the encoder that made the primary table was NOT "
                "trained (random weights): these numbers say nothing about "
                "the brain.",
            )
        )
    blocks.append(
        Block(
            "p",
            (
                f"Primary table: {args.tables[0]} (encoder {encoder.get('spec', 'unknown')}, weights "
                f"sha256 {str(encoder.get('weights_sha256', 'unknown'))[:12]}). n = {results['n_images']} "
                f"images; memorability column `{args.memorability}`; category control: "
                f"{'`' + category + '`' if category else 'none'}; covariates: {', '.join(covariates) or 'none'}; "
                f"seed {args.seed}; Spearman CI: BCa bootstrap, {args.bootstrap} resamples; "
                f"spin test: {args.spins if args.vertices else 0} rotations."
            ),
        )
    )
    versions = _versions(used_ray)
    blocks.append(Block("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())))
    blocks.extend(Block("p", note) for note in notes)
    blocks.append(Block("h2", "Regions"))
    rows = []
    for rec in sorted(
        records, key=lambda r: -np.inf if r["pearson_r"] is None else -r["pearson_r"]
    ):
        rows.append(
            {
                "ROI": rec["roi"],
                "n": rec["n"],
                "dropped": rec["n_dropped"],
                "r": rec["pearson_r"],
                "r 95% CI": "–"
                if rec["pearson_ci"][0] is None
                else f"[{rec['pearson_ci'][0]:.3f}, {rec['pearson_ci'][1]:.3f}]",
                "p": rec["pearson_p"],
                "q (BH)": rec["pearson_q"],
                "ρ": rec["spearman_r"],
                "partial r": rec["partial_r"],
                "partial p": rec["partial_p"],
                "frac r<0": rec["frac_vertices_negative"],
                "frac r>0": rec["frac_vertices_positive"],
                "spin p (mean)": rec["spin_p_mean_r"],
                "spin p (coherence)": rec["spin_p_coherence"],
                "note": rec["reason"] or "",
            }
        )
    blocks.append(Block("table", pd.DataFrame(rows)))
    if category:
        within = pd.DataFrame(
            [
                {
                    "ROI": rec["roi"],
                    **{
                        f"{level} {key}": value[key]
                        for level, value in rec["within_category"].items()
                        for key in ("n", "r", "p")
                    },
                }
                for rec in records
            ]
        )
        blocks.append(Block("h2", "Within each category (Pearson r)"))
        blocks.append(Block("table", within))
    if results["agreement"]:
        blocks.append(Block("h2", "Agreement between predictors (Pearson r)"))
        blocks.append(
            Block(
                "table",
                pd.DataFrame(
                    [
                        {"ROI": a["roi"], **a["r"], "signs agree": a["signs_agree"]}
                        for a in results["agreement"]
                    ]
                ),
            )
        )
        for name, path, meta in zip(predictors, args.tables, metadata, strict=True):
            if (meta.get("encoder") or {}).get("trained") is False:
                blocks.append(Block("p", f"Note: {name} ({path}) comes from an untrained encoder."))
    blocks.append(Block("h2", "Figures"))
    blocks.extend(Block("img", name, caption) for name, caption in figures)
    return blocks


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
