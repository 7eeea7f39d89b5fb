"""`neuromem decompose` at LaMem scale, against the bare alternative a user would write.

Builds score tables in the real format (39 default ROI columns, memorability, category; optional
raw float16 ``vertices``) of 4k/16k/58k rows, runs ``neuromem decompose TABLE --out DIR --seed 0``
as a whole command in a subprocess (default settings: category control, within-category
statistics, Spearman interval ``auto``), and reads its per-stage seconds (``--summary-json``).
The bare alternative is pingouin per ROI (``pg.corr`` Pearson and Spearman with their intervals,
``pg.partial_corr`` with the category as one-hot covariates); with vertices, a per-vertex
``scipy.stats.pearsonr`` loop over 500 vertices, extrapolated to 20,484. Each table with
vertices is decomposed twice: first with an empty ``NEUROMEM_CACHE`` (a user's first run: the
spin rotations are computed) and again with them cached (``spin_cache`` cold / warm in the JSON).
Prints the ratios and writes JSON (with the machine's load, since the figures depend on it).

Examples
--------
::

    python benchmarks/decompose_scale.py --sizes 4000 16000 58000 --vertex-sizes 58000 \\
        --out benchmarks/results/decompose_scale_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_FILE = 4096


def build_table(folder: Path, n_rows: int, *, vertices: bool, seed: int = 0) -> None:
    """A score table of ``n_rows`` (reused when it exists): ROI responses with planted effects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neuromem.cortex.rois import load_roi_set, roi_column
    from neuromem.scoring.table import build_metadata, vertices_to_arrow, write_metadata

    if (folder / "_done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    roi_set = load_roi_set("default")
    rng = np.random.default_rng(seed)
    memorability = rng.beta(6, 4, n_rows)
    category = rng.choice(["object", "scene", "face", "animal"], n_rows)
    z = (memorability - memorability.mean()) / memorability.std()
    metadata = build_metadata(encoder={"spec": "benchmark", "trained": False},
                              atlas=roi_set.atlas, rois=roi_set.to_dict(), command="benchmark")
    effect_r = rng.normal(0, 0.3, len(roi_set.names))
    for start in range(0, n_rows, ROWS_PER_FILE):
        rows = slice(start, min(n_rows, start + ROWS_PER_FILE))
        k = rows.stop - rows.start
        columns = {"image_id": [f"im{i:06d}" for i in range(rows.start, rows.stop)],
                   "memorability": memorability[rows], "category": category[rows]}
        for j, name in enumerate(roi_set.names):
            columns[roi_column(name)] = pa.array(
                effect_r[j] * z[rows] + rng.standard_normal(k), pa.float32())
        if vertices:
            responses = rng.standard_normal((k, 20484)).astype(np.float16)
            responses[:, roi_set.indices["RSC"]] -= (z[rows, None] * 0.5).astype(np.float16)
            columns["vertices"] = vertices_to_arrow(responses)
        pq.write_table(write_metadata(pa.table(columns), metadata),
                       folder / f"part-{start // ROWS_PER_FILE:05d}.parquet")
    (folder / "_done").touch()


def run_decompose(table: Path, out: Path, extra: list[str], cache: Path) -> dict:
    """The whole command in a subprocess with ``NEUROMEM_CACHE=cache``: wall seconds, stage
    seconds, peak RSS (MB)."""
    summary = out.with_suffix(".json")
    command = [sys.executable, "-m", "pipelines.decompose", str(table), "--out", str(out),
               "--seed", "0", "--no-progress", "--summary-json", str(summary), *extra]
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, env={
        **os.environ, "RAY_AUTH_MODE": "disabled", "NEUROMEM_CACHE": str(cache)})
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return {"wall_s": round(wall, 2), "stages": json.loads(summary.read_text())["stages"],
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def bare_roi_statistics(table: Path) -> float:
    """Seconds of pingouin per ROI (Pearson, Spearman, partial on one-hot category)."""
    import pandas as pd
    import pingouin as pg

    frame = pd.read_parquet(table, columns=None).drop(columns=["vertices"], errors="ignore")
    rois = [c for c in frame.columns if c.startswith("roi_")]
    dummies = pd.get_dummies(frame["category"], drop_first=True, dtype=float)
    data = pd.concat([frame, dummies], axis=1)
    start = time.perf_counter()
    for roi in rois:
        pg.corr(data[roi], data["memorability"], method="pearson")
        pg.corr(data[roi], data["memorability"], method="spearman")
        pg.partial_corr(data, x=roi, y="memorability", covar=list(dummies.columns))
        for _, group in data.groupby("category"):
            pg.corr(group[roi], group["memorability"])
    return time.perf_counter() - start


def bare_vertex_loop(table: Path, n_vertices: int = 500) -> float:
    """Seconds of a per-vertex ``scipy.stats.pearsonr`` loop, extrapolated to 20,484 vertices
    (reading the vertices included)."""
    from scipy import stats

    from neuromem.scoring.table import open_table, read_vertices

    start = time.perf_counter()
    dataset = open_table(str(table))
    memorability = dataset.to_table(columns=["memorability"]).column(0).to_numpy()
    responses_nv = read_vertices(dataset)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    for v in range(n_vertices):
        stats.pearsonr(responses_nv[:, v].astype(np.float64), memorability)
    return loaded + (time.perf_counter() - start) * 20484 / n_vertices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000],
                        help="rows of the ROI-only tables")
    parser.add_argument("--vertex-sizes", type=int, nargs="*", default=[4000],
                        help="rows of the tables with vertices (58,000 x 20,484 float16 is 2.4 GB)")
    parser.add_argument("--spins", type=int, default=1000, help="spins of the vertex runs")
    parser.add_argument("--work", default="/tmp/neuromem_decompose_bench", help="tables, outputs")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    work = Path(args.work)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_1min_before": os.getloadavg()[0]},
               "roi_only": [], "with_vertices": []}
    cache = work / "cache"  # emptied: the first vertex run computes its spin rotations
    shutil.rmtree(cache, ignore_errors=True)
    for n in args.sizes:
        table = work / f"rois_{n}"
        build_table(table, n, vertices=False)
        run = run_decompose(table, work / f"out_rois_{n}", [], cache)
        bare = bare_roi_statistics(table)
        run.update(rows=n, bare_pingouin_s=round(bare, 2),
                   ratio_bare_over_neuromem=round(bare / run["wall_s"], 2))
        results["roi_only"].append(run)
        print(f"{n:>6} rows, ROIs only: neuromem decompose {run['wall_s']:.1f} s "
              f"(stages {run['stages']}); pingouin per ROI {bare:.1f} s; ratio "
              f"{run['ratio_bare_over_neuromem']:.2f}", flush=True)
    for n in args.vertex_sizes:
        table = work / f"vertices_{n}"
        build_table(table, n, vertices=True)
        runs = []
        for spin_cache in ("cold", "warm"):  # a first run, then a rerun with the spins cached
            if spin_cache == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            runs.append(run_decompose(table, work / f"out_vertices_{n}_{spin_cache}",
                                      ["--vertices", "--spins", str(args.spins)], cache)
                        | {"spin_cache": spin_cache})
        # only now: a child's peak RSS counts this process's peak at the child's start (Linux
        # carries the high-water mark across fork and exec), and the bare loop holds all vertices
        bare = bare_vertex_loop(table)
        for run in runs:
            spin_cache = run["spin_cache"]
            run.update(rows=n, spins=args.spins,
                       bare_scipy_vertex_loop_s_extrapolated=round(bare, 1),
                       ratio_bare_over_neuromem=round(bare / run["wall_s"], 2))
            results["with_vertices"].append(run)
            print(f"{n:>6} rows with vertices, {args.spins} spins ({spin_cache} spin cache): "
                  f"neuromem decompose {run['wall_s']:.1f} s (stages {run['stages']}, peak "
                  f"{run['peak_rss_mb']} MB); scipy per-vertex loop {bare:.0f} s "
                  f"(extrapolated); ratio {run['ratio_bare_over_neuromem']:.2f}", flush=True)
    results["machine"]["load_average_1min_after"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
