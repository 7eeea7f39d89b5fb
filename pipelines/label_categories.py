"""Label each image's category (scene/object or your classes) by zero-shot CLIP or from a CSV.

``neuromem label-categories TABLE --out OUT`` reads the images of a score table (its ``source``
column, or ``--images ROOT`` + ``image_id``), classifies them by zero-shot CLIP on an actor pool
(GPU actors when the cluster has GPUs) and writes a copy of the table to ``OUT`` with the
``category`` column (``--column``) set and a ``category_probability`` column (the probability of
the chosen class). With ``--csv FILE`` (columns ``image_id``, ``category`` and optionally
``dataset``) the labels come from the file and no model runs.

The input table is never modified: ``OUT`` holds the same files, rows, row order, columns and
metadata (plus a record of the labelling under ``annotations``). Images that cannot be read get
a null label and are listed in ``OUT/_errors/label-categories.parquet``. A column that already
holds values is only replaced with ``--overwrite``. On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.label_categories s3://bucket/scores/lamem --out s3://bucket/scores/lamem-labelled
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.annotate import LabelConfig, run_label_categories


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem label-categories``."""
    parser.add_argument("table", help="score table (folder, Parquet file or URI)")
    options.add_out(parser, what="new folder for the labelled copy")
    parser.add_argument("--images", default=None,
                        help="image root: read ROOT/<image_id> instead of the 'source' column")
    parser.add_argument("--csv", default=None,
                        help="take labels from a CSV (image_id, category[, dataset]) instead")
    parser.add_argument("--classes", default=None,
                        help="classes and prompts: 'scene=a photo of a scene|a landscape,"
                             "object=a photo of an object' (default: scene/object, 4 prompts each)")
    parser.add_argument("--column", default="category", help="column to write")
    parser.add_argument("--clip-model", default="open_clip:ViT-B-32@openai", metavar="SPEC",
                        help="CLIP model: open_clip:NAME[@PRETRAINED] (tag or local file; no "
                             "@PRETRAINED: random weights), e.g. open_clip:tiny for tests")
    options.add_seed(parser, what="random model weights (a --clip-model without @PRETRAINED)")
    options.add_cluster(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Label the images and write the labelled copy of the table."""
    print(run_label_categories(LabelConfig.from_args(args)).format())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
