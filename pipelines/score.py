"""Score a dataset with a brain encoder into a Parquet score table (Ray Data actor pool).

Examples
--------
Local (an embedded Ray on this machine)::

    neuromem score --dataset lamem --root data/lamem --encoder tribev2 --out scores/lamem

On a cluster (the driver runs on the head; workers get this checkout)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.score --dataset lamem --root /data/lamem --encoder tribev2 \\
        --out s3://bucket/scores/lamem --actors 8 --gpus-per-actor 1

Rerunning into the same ``--out`` resumes: ids already written (or already failed) are
skipped. Failed inputs go to ``OUT/_errors/``.
"""

from __future__ import annotations

import argparse
import json
import os

from neuromem.cli import run_module
from neuromem.scoring.job import DATASETS, DECODE_MODES, ScoreConfig, run_score_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem score``."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout of --root")
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--encoder", default="clip-probe:tiny",
                        help="encoder spec: tribev2, tribev2:/dir, clip-probe:/probe.safetensors, "
                             "clip-probe:tiny (default: %(default)s, untrained)")
    parser.add_argument("--out", required=True,
                        help="output score table: a folder or a pyarrow URI (s3://, gs://)")
    parser.add_argument("--rois", default="default", help="ROI set: 'default' or a YAML file")
    parser.add_argument("--keep-vertices", action="store_true",
                        help="also store the 20,484 float16 vertex responses of every row")
    parser.add_argument("--split", default=None, help="LaMem split, e.g. test_1 (default: all)")
    parser.add_argument("--scores", default=None,
                        help="--dataset folder: CSV of image_id, memorability, category")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N rows of the dataset listing")
    parser.add_argument("--actors", type=int, default=1, help="encoder actors (fixed pool)")
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs reserved per actor (default: 1)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads per actor on CPU (default: --cpus-per-actor)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="rows per encoder batch (default: 64)")
    parser.add_argument("--rows-per-part", type=int, default=1024,
                        help="rows per Parquet part, a multiple of --batch-size; a killed run "
                             "redoes at most one part per actor (default: 1024)")
    parser.add_argument("--decode", choices=DECODE_MODES, default="actor",
                        help="decode in the encoder actors (nvJPEG on GPU) or in separate "
                             "CPU tasks (default: actor)")
    parser.add_argument("--decode-threads", type=int, default=4,
                        help="decoding threads per actor (default: 4)")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help="frames per video clip (default: the encoder's)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", default=None,
                        help="also write the run summary as JSON to this local file")


def run(args: argparse.Namespace) -> int:
    """Run the scoring job and print its summary."""
    config = ScoreConfig(
        dataset=args.dataset,
        root=args.root,
        encoder=args.encoder,
        out=args.out,
        rois=args.rois,
        keep_vertices=args.keep_vertices,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        torch_threads=args.torch_threads,
        batch_size=args.batch_size,
        rows_per_part=args.rows_per_part,
        split=args.split,
        scores=args.scores,
        limit=args.limit,
        decode=args.decode,
        decode_threads=args.decode_threads,
        clip_frames=args.clip_frames,
        address=args.address,
        progress=not args.no_progress,
    )
    summary = run_score_job(config)
    print(summary.format())
    if args.summary_json:
        with open(os.path.expanduser(args.summary_json), "w", encoding="utf-8") as fh:
            json.dump(summary.to_dict(), fh, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
