"""Ray scoring job vs a plain single-process PyTorch loop on the same JPEG files.

Both do the same work: read LaMem-layout JPEGs, decode them (worker threads; nvJPEG on a CUDA
device), run the encoder, reduce to ROI columns and write Parquet parts, through the same
:class:`neuromem.scoring.batch.BatchScorer`. Each is timed as a whole command, from process
start to the last Parquet part written (a subprocess). Reported:

- end-to-end ratio = bare wall time / Ray wall time (1.0: Ray costs nothing);
- steady-state ratio = Ray images/s / bare images/s, both measured from the first written
  batch to the last (the pipeline once the actors are up);
- where the time goes: start (process start to first batch written), decode, encode, write
  (summed over actors; in the bare loop decoding overlaps encoding in a prefetch thread).

Examples
--------
CPU (this machine; default small set)::

    python benchmarks/score_throughput.py --save benchmarks/results/score_throughput_cpu.json

GPU, LaMem-sized, random-weight ViT-B-32 probe at real image size::

    python benchmarks/score_throughput.py --n 58000 --real-size --batch-size 512 \\
        --save benchmarks/results/score_throughput_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    """The plain PyTorch loop: prefetch thread reads + decodes the next batch while one encodes."""
    import torch

    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.data import readers
    from neuromem.data.schema import rows_to_arrow
    from neuromem.encoders import load_encoder
    from neuromem.scoring.batch import BatchScorer
    from neuromem.scoring.parts import PartWriter

    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    encoder = load_encoder(args.encoder, device)
    reducer = RoiReducer(load_roi_set("default"))
    scorer = BatchScorer(encoder, reducer, reducer.column_names, keep_vertices=args.keep_vertices,
                         executor=ThreadPoolExecutor(args.decode_threads))
    writer = PartWriter(args.out)
    writer.prepare()
    listing = readers.list_rows("lamem", args.root)
    batches = [listing.iloc[i : i + args.batch_size] for i in range(0, len(listing), args.batch_size)]

    def load(rows):
        return scorer.decode(readers.load_payloads(rows_to_arrow(rows)))

    seconds = {"decode_s": 0.0, "encode_s": 0.0, "table_s": 0.0, "write_s": 0.0}
    first_at = last_at = None
    n_done = first_rows = 0
    with ThreadPoolExecutor(1) as prefetch:
        pending = prefetch.submit(load, batches[0])
        for k in range(len(batches)):
            decoded = pending.result()
            if k + 1 < len(batches):
                pending = prefetch.submit(load, batches[k + 1])
            scored = scorer.score(decoded)
            tick = time.perf_counter()
            writer.write(scored.scores)
            writer.write(scored.errors, errors=True)
            seconds["write_s"] += time.perf_counter() - tick
            for name in ("decode_s", "encode_s", "table_s"):
                seconds[name] += scored.timings[name]
            n_done += scored.scores.num_rows + scored.errors.num_rows
            last_at = time.perf_counter()
            if first_at is None:
                first_at, first_rows = last_at, n_done
    return {
        "rows": n_done,
        "wall_s": last_at - start,
        "first_result_s": first_at - start,
        "steady_images_per_s": (n_done - first_rows) / (last_at - first_at)
        if last_at > first_at else None,
        "seconds": seconds,
    }


def timed(command: list[str], env: dict) -> float:
    """Run ``command``; return its wall time from process start to exit, s."""
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_ray(
    args, root: Path, work: Path, encoder: str, actors: int, decode: str, env: dict
) -> dict:
    name = f"ray_{actors}" + ("" if decode == "actor" else f"_{decode}")
    out, summary = work / name, work / f"{name}.json"
    threads = max(1, (os.cpu_count() or 1) // actors)  # the bare loop uses every core
    command = [
        sys.executable, "-m", "pipelines.score", "--dataset", "lamem", "--root", str(root),
        "--encoder", encoder, "--out", str(out), "--actors", str(actors),
        "--batch-size", str(args.batch_size), "--decode", decode,
        "--decode-threads", str(args.decode_threads), "--no-progress",
        "--summary-json", str(summary),
    ]
    if not env.get("CUDA_VISIBLE_DEVICES") == "" and args.gpus_per_actor is not None:
        command += ["--gpus-per-actor", str(args.gpus_per_actor)]
    if not args.gpu:
        command += ["--torch-threads", str(threads)]
    if args.keep_vertices:
        command.append("--keep-vertices")
    wall = timed(command, env)
    result = json.loads(summary.read_text())
    result["command_wall_s"] = wall
    result["start_s"] = wall - result["wall_s"] + (result["first_result_s"] or 0.0)
    return result


def run_bare(args, root: Path, work: Path, encoder: str, env: dict) -> dict:
    out, summary = work / "bare", work / "bare.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--bare", "--root", str(root),
        "--encoder", encoder, "--out", str(out), "--batch-size", str(args.batch_size),
        "--decode-threads", str(args.decode_threads), "--summary-json", str(summary),
    ]
    if args.keep_vertices:
        command.append("--keep-vertices")
    wall = timed(command, env)
    result = json.loads(summary.read_text())
    result["command_wall_s"] = wall
    result["start_s"] = wall - result["wall_s"] + result["first_result_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=640, help="images (default: %(default)s)")
    parser.add_argument("--real-size", action="store_true",
                        help=f"{REAL_SIDE}-px JPEGs and a random ViT-B-32 probe "
                             f"(default: {SMALL_SIDE}-px JPEGs and clip-probe:tiny)")
    parser.add_argument("--encoder", default=None, help="encoder spec (overrides --real-size's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode", choices=("actor", "tasks"), nargs="+", default=["actor"],
                        help="where the Ray job decodes (both: compare; run names ray_N_tasks)")
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--gpus-per-actor", type=float, default=None)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep-vertices", action="store_true")
    parser.add_argument("--work", default="/tmp/neuromem_bench", help="data and outputs")
    parser.add_argument("--save", default=None, help="write the results JSON here")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--summary-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bare:
        Path(args.summary_json).write_text(json.dumps(bare_loop(args)))
        return 0

    import shutil

    import torch

    args.gpu = torch.cuda.is_available()
    side = REAL_SIDE if args.real_size else SMALL_SIDE
    work = Path(args.work)
    root = work / f"lamem_{args.n}_{side}"
    prepare_data(root, args.n, side)
    encoder = args.encoder or (
        real_size_probe(work / "vit_b_32_random.safetensors") if args.real_size
        else "clip-probe:tiny"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    runs: dict[str, dict] = {}
    load_before = os.getloadavg()
    plan = [("bare", None, None)] + [
        (f"ray_{a}" + ("" if d == "actor" else f"_{d}"), a, d)
        for d in args.decode for a in args.actors
    ]
    for name, actors, decode in plan:
        shutil.rmtree(work / name, ignore_errors=True)
        if name == "bare":
            runs[name] = run_bare(args, root, work, encoder, env)
        else:
            runs[name] = run_ray(args, root, work, encoder, actors, decode, env)
        run = runs[name]
        print(f"{name:>6}: {run['command_wall_s']:7.1f} s end to end, "
              f"start {run['start_s']:.1f} s, steady {run['steady_images_per_s'] or 0:.1f} img/s; "
              + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in run["seconds"].items()))
    bare = runs["bare"]
    ratios = {
        name: {
            "end_to_end": bare["command_wall_s"] / run["command_wall_s"],
            "steady_state": (run["steady_images_per_s"] or 0) / bare["steady_images_per_s"],
        }
        for name, run in runs.items() if name != "bare"
    }
    for name, ratio in ratios.items():
        print(f"{name}: end-to-end ratio {ratio['end_to_end']:.2f}, "
              f"steady-state ratio {ratio['steady_state']:.2f}")
    result = {
        "n_images": args.n, "image_side": side, "encoder": encoder,
        "batch_size": args.batch_size, "decode": args.decode,
        "decode_threads": args.decode_threads, "keep_vertices": args.keep_vertices,
        "device": torch.cuda.get_device_name() if args.gpu else f"cpu x{os.cpu_count()}",
        "platform": platform.platform(), "torch": torch.__version__,
        "ray": __import__("ray").__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs, "ratios": ratios,
        # the machine may be shared: 1-minute load average before and after the runs
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
    }
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
