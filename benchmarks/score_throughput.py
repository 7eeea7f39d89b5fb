"""`neuromem score` on Ray vs a plain single-process PyTorch loop on the same JPEG files.

Both do the same work through the same code: read LaMem-layout JPEGs, decode them
(:func:`neuromem.data.batch.decode_for`: worker threads, nvJPEG on a CUDA device), run
:class:`neuromem.scoring.batch.BatchScorer` and write Parquet parts with
:class:`neuromem.runtime.storage.PartWriter`. Each is run as a whole command in a subprocess.
Reported, per run:

- **end to end**: wall time from process start to exit; ratio = bare / Ray (1.0: Ray costs
  nothing);
- **steady state**: images/s over the interval where every worker is busy, computed from the
  per-batch start/end times the workers record (:func:`neuromem.runtime.throughput.steady_state`,
  the same function for the actors and the loop); ratio = Ray / bare. The interval and the
  number of batches inside it are printed; with fewer than 5 batches no steady-state figure is
  given (use more images);
- where the time goes: start-up (Ray, actor processes, model build, first batch) and the
  stage seconds (decode, model, write) summed over workers.

Examples
--------
CPU (this machine; default small set)::

    python benchmarks/score_throughput.py --out benchmarks/results/score_throughput_cpu.json

GPU, ≥ 20,000 JPEGs at 256 px, random-weight ViT-B-32 probe (``--encoder tribev2:DIR`` for a
TRIBE v2 folder)::

    python benchmarks/score_throughput.py --n 20000 --real-size --batch-size 512 \\
        --out benchmarks/results/score_throughput_gpu.json
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL_SIDE, REAL_SIDE = 96, 256


def prepare_data(root: Path, n_images: int, side: int) -> None:
    """Write the LaMem-layout JPEG set once (reused when it already has ``n_images``)."""
    from neuromem.data import synthetic

    images = root / "images"
    if images.is_dir() and len(list(images.glob("*.jpg"))) == n_images:
        return
    synthetic.write_lamem(root, n_images=n_images, seed=0, image_size=side,
                          processes=os.cpu_count() or 1)


def real_size_probe(path: Path) -> str:
    """A random-weight ViT-B-32 CLIP probe file (real size, no download); returns its spec."""
    import torch

    from neuromem.encoders.clip_probe import save_clip_probe

    if not path.exists():
        generator = torch.Generator().manual_seed(0)
        save_clip_probe(
            path, torch.randn(20484, 512, generator=generator) * 0.02, torch.zeros(20484),
            model_name="ViT-B-32", pretrained="", feature_norm="l2",
            training={"note": "random weights for benchmarking"},
        )
    return f"clip-probe:{path}"


def bare_loop(args: argparse.Namespace) -> dict:
    """The plain PyTorch loop: a prefetch thread reads and decodes the next batch while one runs."""
    import torch

    from neuromem.data.batch import decode_for
    from neuromem.data.readers import list_rows, load_payloads
    from neuromem.data.schema import rows_to_arrow
    from neuromem.jobs.score import build_scorer
    from neuromem.runtime.storage import PartWriter
    from neuromem.runtime.throughput import BatchTime, stage_totals, steady_state

    start = time.time()
    if not torch.cuda.is_available():
        torch.set_num_threads(os.cpu_count() or 1)
    scorer = build_scorer(args.encoder, "default", args.keep_vertices, None)
    model_ready = time.time()
    writer = PartWriter(args.table)
    writer.prepare()
    listing = list_rows("lamem", args.root)
    batches = [listing.iloc[i : i + args.batch_size]
               for i in range(0, len(listing), args.batch_size)]
    decoder = ThreadPoolExecutor(args.decode_threads)

    def load(rows):
        return decode_for(scorer, load_payloads(rows_to_arrow(rows)), decoder)

    times: list[BatchTime] = []
    with ThreadPoolExecutor(1) as prefetch:
        pending = prefetch.submit(load, batches[0])
        for k in range(len(batches)):
            begin = time.time()
            decoded = pending.result()
            if k + 1 < len(batches):
                pending = prefetch.submit(load, batches[k + 1])
            waited = time.time()
            table = scorer(decoded)
            modelled = time.time()
            rows = decoded.rows
            for name in table.column_names:
                rows = rows.append_column(table.schema.field(name), table.column(name))
            writer.write(rows)
            writer.write(decoded.errors, errors=True)
            end = time.time()
            times.append(BatchTime("loop", begin, end, len(batches[k]),
                                   {"decode": decoded.seconds, "wait": waited - begin,
                                    "model": modelled - waited, "write": end - modelled}))
    return {
        "rows": sum(t.rows for t in times),
        "wall_s": times[-1].end - start,
        "startup": {"model": model_ready - start, "first_batch": times[0].end - model_ready},
        "steady": steady_state(times).to_dict(),
        "seconds": stage_totals(times),
    }


def timed(command: list[str], env: dict) -> float:
    """Run ``command``; return its wall time from process start to exit, s."""
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_ray(args, root: Path, work: Path, actors: int, env: dict) -> dict:
    name = f"ray_{actors}" + ("" if args.decode == "actor" else f"_{args.decode}")
    out, summary = work / name, work / f"{name}.json"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "pipelines.score", "--dataset", "lamem", "--root", str(root),
        "--encoder", args.encoder, "--out", str(out), "--actors", str(actors),
        "--batch-size", str(args.batch_size), "--rows-per-part", str(args.rows_per_part),
        "--decode", args.decode, "--decode-threads", str(args.decode_threads),
        "--no-progress", "--summary-json", str(summary),
    ]
    if args.gpus_per_actor is not None:
        command += ["--gpus-per-actor", str(args.gpus_per_actor)]
    elif args.gpu:  # N actors share each GPU
        command += ["--gpus-per-actor", str(1.0 / actors)]
    if not args.gpu:  # the bare loop uses every core; the actors share them
        command += ["--torch-threads", str(max(1, (os.cpu_count() or 1) // actors))]
    if args.keep_vertices:
        command.append("--keep-vertices")
    wall = timed(command, env)
    result = json.loads(summary.read_text())
    result["command_wall_s"] = wall
    return result


def run_bare(args, root: Path, work: Path, env: dict) -> dict:
    out, summary = work / "bare", work / "bare.json"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, str(Path(__file__).resolve()), "--bare", "--root", str(root),
        "--encoder", args.encoder, "--table", str(out), "--batch-size", str(args.batch_size),
        "--decode-threads", str(args.decode_threads), "--summary-json", str(summary),
    ]
    if args.keep_vertices:
        command.append("--keep-vertices")
    wall = timed(command, env)
    result = json.loads(summary.read_text())
    result["command_wall_s"] = wall
    return result


def describe(name: str, run: dict) -> str:
    steady = run["steady"]
    rate = (f"steady {steady['rows_per_s']:.1f} img/s over {steady['interval_s']:.1f} s "
            f"({steady['n_batches']} batches)" if steady.get("rows_per_s")
            else f"no steady state ({steady.get('reason')})")
    startup = ", ".join(f"{k} {v:.1f} s" for k, v in run.get("startup", {}).items())
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in run["seconds"].items())
    return (f"{name:>8}: {run['command_wall_s']:7.1f} s end to end; {rate}; "
            f"start-up: {startup or '-'}; stages: {stages}")


def ratio_of(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=640, help="images")
    parser.add_argument("--real-size", action="store_true",
                        help=f"{REAL_SIDE}-px JPEGs and a random-weight ViT-B-32 probe "
                             f"(default: {SMALL_SIDE}-px JPEGs and clip-probe:tiny)")
    parser.add_argument("--encoder", default=None, help="encoder spec (overrides --real-size's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows-per-part", type=int, default=None,
                        help="rows per part of the Ray job (default: --batch-size × 4)")
    parser.add_argument("--decode", choices=("actor", "tasks"), default="actor",
                        help="where the Ray job decodes")
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="default: 1 / actors on a GPU machine (the actors share one GPU)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep-vertices", action="store_true")
    parser.add_argument("--work", default="/tmp/neuromem_bench", help="data and outputs")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--summary-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bare:
        Path(args.summary_json).write_text(json.dumps(bare_loop(args)))
        return 0

    import torch

    args.gpu = torch.cuda.is_available()
    args.rows_per_part = args.rows_per_part or 4 * args.batch_size
    side = REAL_SIDE if args.real_size else SMALL_SIDE
    work = Path(args.work)
    root = work / f"lamem_{args.n}_{side}"
    prepare_data(root, args.n, side)
    args.encoder = args.encoder or (
        real_size_probe(work / "vit_b_32_random.safetensors") if args.real_size
        else "clip-probe:tiny")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()[0]
    runs = {"bare": run_bare(args, root, work, env)}
    print(describe("bare", runs["bare"]))
    for actors in args.actors:
        name = f"ray_{actors}"
        runs[name] = run_ray(args, root, work, actors, env)
        print(describe(name, runs[name]))
    bare = runs["bare"]
    ratios = {
        name: {"end_to_end": ratio_of(bare["command_wall_s"], run["command_wall_s"]),
               "steady_state": ratio_of(run["steady"].get("rows_per_s"),
                                        bare["steady"].get("rows_per_s"))}
        for name, run in runs.items() if name != "bare"
    }
    for name, ratio in ratios.items():
        steady = ratio["steady_state"]
        print(f"{name}: end-to-end ratio {ratio['end_to_end']:.2f}, steady-state ratio "
              + (f"{steady:.2f}" if steady is not None else "not measured (too few batches)"))
    result = {
        "n_images": args.n, "image_side": side, "encoder": args.encoder,
        "batch_size": args.batch_size, "rows_per_part": args.rows_per_part,
        "decode": args.decode, "decode_threads": args.decode_threads,
        "keep_vertices": args.keep_vertices,
        "device": torch.cuda.get_device_name() if args.gpu else f"cpu x{os.cpu_count()}",
        "platform": platform.platform(), "torch": torch.__version__,
        "ray": __import__("ray").__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs, "ratios": ratios,
        # the machine may be shared: 1-minute load average before and after the runs
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
