"""Decode images from brain signals: contrastive brain encoders and 200-way retrieval (Ray Train).

Brain signals come from a score table (``--brain``: measured or predicted ``vertices`` or ROI
columns, one row per presentation, a ``subject`` column when there are several subjects) or
from an ``.npz`` (``--signals``: ``signals`` (N, ...) such as EEG/MEG channels × time,
``image_id`` (N,), optionally ``subject`` (N,)); images are found by ``image_id`` in
``--images``. Each ``--network`` (an image network without its classifier, e.g.
``open_clip:ViT-B-32@openai`` or a human-aligned variant ``open_clip:ViT-B-32@/w.pt``) embeds
every image once; ``--n-test`` images are held out, and for every (network, subject) an MLP
over the z-scored signal is trained with the symmetric InfoNCE loss (Ray Train, DDP).
``--shuffled-control`` trains each again on re-paired signals: its retrieval must be at chance.

Output: ``OUT/retrieval.parquet`` (top-1/top-5 retrieval among the held-out images, ties
averaged, with chance levels; ``subject = "mean"`` rows average the subjects), the trained
encoders in ``OUT/encoders.pt`` and ``OUT/run.json``. Images that cannot be read are listed in
``OUT/_errors/`` and left out. A rerun into the same ``--out`` with other settings is refused
unless ``--overwrite``.

Examples
--------
Local::

    neuromem decode --signals eeg.npz --images images.parquet \\
        --network open_clip:ViT-B-32@openai --network timm:resnet50 --out decode/eeg

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.decode --brain s3://bucket/scores/nsd --signal vertices \\
        --network open_clip:ViT-B-32@openai --workers 2 --gpus-per-worker 1 \\
        --out s3://bucket/decode/nsd
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.decoding.signals import SIGNAL_KINDS
from neuromem.jobs.decode import DecodeConfig, run_decode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem decode``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--brain", help="score table of brain responses, one row per "
                                        "presentation (local path or URI)")
    source.add_argument("--signals",
                        help=".npz with signals (N, ...), image_id (N,) and optionally subject (N,)")
    parser.add_argument("--images", default=None,
                        help="table with image_id and source (default: --brain)")
    parser.add_argument("--signal", choices=SIGNAL_KINDS, default="vertices",
                        help="with --brain: decode from the vertices or the ROI columns")
    options.add_network(parser, repeatable=True, what="image network to decode into",
                        old_names=("--image-encoder",))
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side of the networks in pixels (default: each network's)")
    parser.add_argument("--n-test", type=int, default=200, help="held-out images")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs per encoder")
    parser.add_argument("--batch-size", type=int, default=128, help="rows per step per worker")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--hidden", type=int, default=1024, help="width of the MLP")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout of the MLP")
    parser.add_argument("--shuffled-control", action="store_true",
                        help="also train on shuffled pairs (retrieval must fall to chance)")
    options.add_train_job(parser, seed_what="the held-out draw, weights and batch order")


def run(args: argparse.Namespace) -> int:
    """Embed, train, evaluate and print the retrieval summary."""
    summary = run_decode(DecodeConfig.from_args(args))
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
