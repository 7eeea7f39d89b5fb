"""Add ResMem memorability scores (``memorability_resmem``) to a copy of a score table, on Ray.

``neuromem assess TABLE --out OUT`` reads the images of a score table (its ``source`` column, or
``--images ROOT`` + ``image_id``), scores them with ResMem (Needell & Bainbridge 2022; the
``resmem`` package ships its weights, so this runs offline) on an actor pool (GPU actors when the
cluster has GPUs), and writes a copy of the table to ``OUT`` with a float32
``memorability_resmem`` column in [0, 1]. Images are preprocessed exactly as the ``resmem``
package does (Resize(256, 256) → CenterCrop(227) → ToTensor, no normalisation, on the decoded
full-size image).

The input table is never modified: ``OUT`` holds the same files, rows, row order, columns and
metadata (plus a record of the scoring under ``annotations``). Images that cannot be read get a
null score and are listed in ``OUT/_errors/assess.parquet``. On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.assess s3://bucket/scores/bold5000 --out s3://bucket/scores/bold5000-resmem
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.annotate import AssessConfig, run_assess


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem assess``."""
    parser.add_argument("table", help="score table (folder, Parquet file or URI)")
    options.add_out(parser, what="new folder for the scored copy")
    parser.add_argument("--images", default=None,
                        help="image root: read ROOT/<image_id> instead of the 'source' column")
    options.add_cluster(parser, batch_size=32)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Score the images with ResMem and write the scored copy of the table."""
    print(run_assess(AssessConfig.from_args(args)).format())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
