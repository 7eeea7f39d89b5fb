"""Benchmark: vertex-level Pearson r over a LaMem-sized score table on a few CPU cores.

Writes a table of ``--rows`` images × 20,484 float16 vertices in the scoring job's format (one
Parquet part per ``--rows-per-file`` rows, as ``neuromem score --rows-per-part`` writes them, with
the same write options, ``vertices`` as plain ``fixed_size_binary(40968)``) into a temporary directory, then times, each in a fresh process
pinned to ``--cores`` CPUs with as many BLAS threads:

- ``streaming``: :func:`neuromem.analysis.vertex_pearson`, one pass over the row groups
  (targets: ≤ 10 s and ≤ 1 GB peak resident memory for 58,000 rows on 2 cores);
- ``read_vertices``: :func:`neuromem.read_vertices` of the whole table as float16, three times
  (target: median ≤ 2 s for 58,000 rows on 2 cores; a fresh 2.4 GB array is mostly first-touch
  page faults, whose cost varies from run to run on a virtual machine);
- ``naive``: a :func:`scipy.stats.pearsonr` call per vertex, timed on ``--naive-vertices``
  vertices and extrapolated to 20,484, plus the time to decode the table;
- ``pandas``: ``pandas.read_parquet`` of the table, rows turned into a float64 matrix, then
  vectorised r; timed on the first ``--pandas-rows`` rows and extrapolated linearly (the whole
  table would need several times the machine's free memory).

Peak memory is ``ru_maxrss`` of the measuring process (it includes the ~300 MB of imported
libraries, reported separately as ``baseline_rss_mb``). Results go to
``benchmarks/results/vertex_corr.json``.

    python benchmarks/vertex_corr.py            # 58,000 rows, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vertex_corr.json"


def _pin(cores: int) -> None:
    """Pin this process (and its children) to ``cores`` CPUs and as many math threads."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(cores)


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    import resource

    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used: less sensitive to a busy machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_table(root: Path, n_rows: int, rows_per_file: int, seed: int = 0) -> dict:
    """A score table with a planted vertex effect; returns what was written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neuromem.runtime.storage import parquet_write_options
    from neuromem.scoring.table import build_metadata, vertices_to_arrow, write_metadata

    rng = np.random.default_rng(seed)
    meta = build_metadata(
        encoder={"spec": "benchmark:random", "weights_sha256": "0" * 64, "trained": False},
        command="benchmarks/vertex_corr.py",
    )
    effect_v = np.linspace(-1, 1, 20484, dtype=np.float32)
    start = time.perf_counter()
    for i, lo in enumerate(range(0, n_rows, rows_per_file)):
        n = min(rows_per_file, n_rows - lo)
        memorability = rng.uniform(0.4, 0.95, n)
        responses = rng.standard_normal((n, 20484), dtype=np.float32)
        responses += (memorability[:, None].astype(np.float32) - 0.68) * 4 * effect_v
        table = pa.table(
            {
                "image_id": [f"{j:08d}.jpg" for j in range(lo, lo + n)],
                "memorability": memorability,
                "vertices": vertices_to_arrow(responses),
            }
        )
        pq.write_table(write_metadata(table, meta), root / f"part-{i:06d}.parquet",
                       **parquet_write_options(table.schema))
    size = sum(p.stat().st_size for p in root.glob("*.parquet"))
    return {"write_s": time.perf_counter() - start, "files": i + 1, "bytes": size}


def child_streaming(table: str) -> dict:
    from neuromem.analysis import vertex_pearson

    baseline, _ = _rss_mb()
    times, cpu = [], []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), _cpu_s()
        r_v = vertex_pearson(table)
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_s() - start_cpu)
    return {
        "seconds": times,
        "cpu_seconds": cpu,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _rss_mb()[1],
        "r_first": float(r_v[0]),
        "r_last": float(r_v[-1]),
    }


def child_read_vertices(table: str) -> dict:
    import neuromem
    import neuromem.scoring.table  # noqa: F401  (imported before the clock starts)

    start, start_cpu = time.perf_counter(), _cpu_s()
    values = neuromem.read_vertices(table)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": _cpu_s() - start_cpu,
        "rows": len(values),
        "peak_rss_mb": _rss_mb()[1],
    }


def child_naive(table: str, n_vertices: int) -> dict:
    import numpy as np
    from scipy import stats

    from neuromem.scoring.table import decode_vertices, iter_batches

    start = time.perf_counter()
    columns, ys = [], []
    for batch in iter_batches(table, columns=["vertices", "memorability"]):
        columns.append(decode_vertices(batch.column("vertices"))[:, :n_vertices].astype(np.float64))
        ys.append(batch.column("memorability").to_numpy())
    load_s = time.perf_counter() - start
    x_nv, y = np.concatenate(columns), np.concatenate(ys)
    start, start_cpu = time.perf_counter(), _cpu_s()
    for v in range(n_vertices):
        stats.pearsonr(x_nv[:, v], y)
    loop_s, loop_cpu = time.perf_counter() - start, _cpu_s() - start_cpu
    return {
        "load_s": load_s,
        "loop_s": loop_s,
        "loop_cpu_s": loop_cpu,
        "n_vertices": n_vertices,
        "seconds_extrapolated": load_s + loop_s * 20484 / n_vertices,
    }


def child_pandas(table: str, n_rows: int, total_rows: int) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow.dataset as ds

    files = sorted(ds.dataset(table, format="parquet").files)
    start, start_cpu = time.perf_counter(), _cpu_s()
    frames, rows = [], 0
    for path in files:  # the first n_rows rows, file by file, as a user would with pandas
        frames.append(pd.read_parquet(path))
        rows += len(frames[-1])
        if rows >= n_rows:
            break
    df = pd.concat(frames, ignore_index=True)
    x_nv = np.stack([np.frombuffer(b, dtype="<f2") for b in df["vertices"]]).astype(np.float64)
    y = df["memorability"].to_numpy()
    xc = x_nv - x_nv.mean(0)
    yc = y - y.mean()
    r_v = (yc @ xc) / np.sqrt((yc @ yc) * (xc * xc).sum(0))
    seconds, cpu = time.perf_counter() - start, _cpu_s() - start_cpu
    _, peak = _rss_mb()
    return {
        "rows": rows,
        "cpu_seconds": cpu,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "seconds_extrapolated": seconds * total_rows / rows,
        "peak_rss_mb_extrapolated": peak * total_rows / rows,
        "r_first": float(r_v[0]),
    }


def _run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=58_000)
    parser.add_argument(
        "--rows-per-file",
        type=int,
        default=1024,
        help="rows per Parquet part (the scoring job's default --rows-per-part)",
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--naive-vertices", type=int, default=200)
    parser.add_argument("--pandas-rows", type=int, default=4096)
    parser.add_argument("--table", default=None, help="reuse (or keep) the table in this folder")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _pin(args.cores)
    if args.child:
        kind, table, *rest = args.child
        result = {
            "streaming": lambda: child_streaming(table),
            "read_vertices": lambda: child_read_vertices(table),
            "naive": lambda: child_naive(table, int(rest[0])),
            "pandas": lambda: child_pandas(table, int(rest[0]), int(rest[1])),
        }[kind]()
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="vertex_corr_") as tmp:
        root = Path(args.table or tmp)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.glob("*.parquet")):
            written = {
                "reused": True,
                "bytes": sum(p.stat().st_size for p in root.glob("*.parquet")),
            }
        else:
            written = write_table(root, args.rows, args.rows_per_file)
        print(f"table: {written}", flush=True)
        streaming = _run_child("streaming", str(root))
        print(f"streaming: {streaming}", flush=True)
        reads = [_run_child("read_vertices", str(root)) for _ in range(3)]
        print(f"read_vertices: {reads}", flush=True)
        naive = _run_child("naive", str(root), str(args.naive_vertices))
        print(f"naive: {naive}", flush=True)
        pandas_ = _run_child("pandas", str(root), str(args.pandas_rows), str(args.rows))
        print(f"pandas: {pandas_}", flush=True)

    import numpy as np
    import pyarrow
    import scipy

    import neuromem

    best = min(streaming["seconds"])
    read_seconds = [read["seconds"] for read in reads]
    results = {
        "rows": args.rows,
        "vertices": 20484,
        "rows_per_file": args.rows_per_file,
        "cores": args.cores,
        "cpu": _cpu_name(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "table": written,
        "streaming_pearson": {
            **streaming,
            "best_seconds": best,
            "meets_10s": best <= 10,
            "meets_1gb": streaming["peak_rss_mb"] <= 1024,
        },
        "read_vertices": {
            "seconds": read_seconds,
            "cpu_seconds": [read["cpu_seconds"] for read in reads],
            "rows": reads[0]["rows"],
            "peak_rss_mb": max(read["peak_rss_mb"] for read in reads),
            "median_seconds": float(np.median(read_seconds)),
            "meets_2s": float(np.median(read_seconds)) <= 2,
        },
        "naive_scipy_loop": naive,
        "pandas_first": pandas_,
        "speedup_vs_naive": naive["seconds_extrapolated"] / best,
        "speedup_vs_pandas": pandas_["seconds_extrapolated"] / best,
        "versions": {
            "neuromem": neuromem.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pyarrow": pyarrow.__version__,
            "python": sys.version.split()[0],
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        f"vertex Pearson, {args.rows} rows, {args.cores} cores: {best:.2f} s, peak "
        f"{streaming['peak_rss_mb']:.0f} MB; naive scipy loop ≈ {naive['seconds_extrapolated']:.0f} s "
        f"({results['speedup_vs_naive']:.0f}×), pandas first ≈ {pandas_['seconds_extrapolated']:.0f} s "
        f"({results['speedup_vs_pandas']:.1f}×); read_vertices median "
        f"{results['read_vertices']['median_seconds']:.2f} s"
    )
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
