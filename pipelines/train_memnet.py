"""Train networks on memorability, categories or both (Ray Train) and benchmark memorability assessors.

For each LaMem split ``k`` (``--split k``, or ``--split all`` for 1..5) a backbone
(``--network LIBRARY:NAME[@WEIGHTS]``) with its classifier removed gets a memorability head, a
category head or both, and is fine-tuned on ``train_k`` with Ray Train (DDP over ``--workers``).
Images are decoded once into ``OUT/pixels/`` (unreadable ones are listed in its ``_errors/``
and left out); the last checkpoint of each split is ``OUT/split_k/`` (``model.safetensors`` +
``config.json``). ``OUT/assess.parquet`` is the memorability-assessor benchmark: Spearman ρ on
``test_k`` per assessor and split (``--resmem`` adds the pretrained ResMem). Trained checkpoints
are layer-scan networks: ``neuromem layers --network memnet:OUT/split_1``.

Rerunning into the same ``--out`` with the same training settings reuses the checkpoints
already there (and may train other splits); other settings are refused unless ``--overwrite``.

Examples
--------
Local::

    neuromem train-memnet --lamem-root data/lamem --network timm:resnet50@/w/r50.safetensors \\
        --task both --categories categories.csv --split all --epochs 10 --out runs/both

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.train_memnet --lamem-root s3://bucket/lamem \\
        --network timm:resnet50 --split all --workers 4 --gpus-per-worker 1 \\
        --out s3://bucket/runs/memnet
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.train_memnet import TrainMemnetConfig, run_train_memnet
from neuromem.representations.memnet import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem train-memnet``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="score table of LaMem rows (image_id, source, "
                                        "memorability, splits, category); local path or URI")
    source.add_argument("--lamem-root", help="LaMem folder (images/, splits/); local path or URI")
    parser.add_argument("--categories", default=None,
                        help="CSV with image_id, category (fills the category labels)")
    options.add_network(parser, default="timm:resnet50", what="backbone",
                        old_names=("--backbone",))
    parser.add_argument("--task", choices=TASKS, default="memorability",
                        help="what the network learns: memorability (regression), category "
                             "(classification) or both")
    parser.add_argument("--memorability-weight", type=float, default=1.0,
                        help="weight of the memorability MSE in the joint loss")
    parser.add_argument("--category-weight", type=float, default=1.0,
                        help="weight of the category cross-entropy in the joint loss")
    parser.add_argument("--split", default="1", help="LaMem split number 1..5, or all")
    parser.add_argument("--epochs", type=int, default=10, help="passes over train_k")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step per worker")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in pixels (default: the backbone's)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use the first N scored images only")
    parser.add_argument("--resmem", action="store_true",
                        help="also assess the test splits with the pretrained ResMem")
    options.add_train_job(parser, seed_what="the heads, random backbone weights and the batch order")


def run(args: argparse.Namespace) -> int:
    """Train, assess and print the summary."""
    summary = run_train_memnet(TrainMemnetConfig.from_args(args))
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
