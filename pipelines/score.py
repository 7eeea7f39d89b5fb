"""Score a dataset with a brain encoder into a Parquet score table (Ray Data actor pool).

Examples
--------
Local (an embedded Ray on this machine)::

    neuromem score --dataset lamem --root data/lamem --encoder tribev2 --out scores/lamem

On a cluster (the driver runs on the head; workers get this checkout)::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.score --dataset lamem --root /data/lamem --encoder tribev2 \\
        --out s3://bucket/scores/lamem --actors 8 --gpus-per-actor 1

Rerunning into the same ``--out`` resumes (ids already written or failed are skipped) when the
settings are the same, and refuses otherwise (``--overwrite`` replaces the table). Failed
inputs go to ``OUT/_errors/``; ``--retry-errors`` tries them again.
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.data.readers import DATASETS
from neuromem.jobs.score import ScoreConfig, run_score
from neuromem.runtime.storage import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem score``."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout of --root")
    parser.add_argument("--root", required=True, help="dataset folder (local path or URI)")
    options.add_encoder(parser, help_text="brain encoder scoring the images")
    options.add_protocol(parser)
    options.add_out(parser, what="output score table")
    parser.add_argument("--retry-errors", action="store_true",
                        help="score again the inputs listed in OUT/_errors")
    options.add_rois(parser)
    parser.add_argument("--keep-vertices", action="store_true",
                        help="also store the 20,484 float16 vertex responses of every row")
    parser.add_argument("--keep-timecourse", action="store_true",
                        help="also store each video's ROI responses at every fMRI step "
                             "(column timecourse; encoders that read videos, tribev2)")
    parser.add_argument("--split", default=None, help="LaMem split, e.g. test_1 (default: all)")
    parser.add_argument("--scores", default=None,
                        help="--dataset folder: CSV of image_id, memorability, category")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only the first N rows of the dataset listing")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help="frames per video clip (default: the encoder's; tribev2 reads "
                             "the frames of its windows and takes none)")
    options.add_cluster(parser)
    parser.add_argument("--rows-per-part", type=int, default=1024,
                        help="rows per Parquet part, whole --batch-size batches; a killed run "
                             "redoes at most one part per actor")
    options.add_progress(parser)
    parser.add_argument("--summary-json", default=None,
                        help="also write the run summary as JSON to this file")


def run(args: argparse.Namespace) -> int:
    """Run the scoring job and print its summary."""
    summary = run_score(ScoreConfig.from_args(args))
    print(summary.format())
    if args.summary_json:
        write_json(args.summary_json, summary.to_dict())
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
