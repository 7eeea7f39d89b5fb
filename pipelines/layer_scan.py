"""Scan every layer of image networks: memorability read-out and brain similarity per layer (Ray).

Each network's layers are pooled to a fixed size and extracted by an actor pool into
``OUT/features/<network>/``; then one Ray task per layer computes the memorability read-out
(PLS, Spearman ρ on LaMem's test splits, or on random splits stratified by category) and, per
ROI of the brain table, Brain-Score neural predictivity and debiased linear CKA. Outputs:
``OUT/layers.parquet``, ``OUT/layers.png``, with ``--compare`` ``OUT/compare.parquet`` (CKA
between networks and the unique variance each explains), and ``OUT/run.json``.

Images that cannot be read are listed in ``OUT/features/<network>/_errors/`` and left out.
Rerunning into the same ``--out`` with the same settings resumes the extraction (and may add
networks); other settings are refused unless ``--overwrite``.

Examples
--------
Local::

    neuromem layers --table scores/lamem --network timm:resnet50@/w/resnet50.safetensors \\
        --network memnet:runs/memnet_both/split_1 --out scans/resnet50 --figure-roi FFA

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.layer_scan --table s3://bucket/scores/lamem \\
        --network torchvision:densenet121@IMAGENET1K_V1 --out s3://bucket/scans/densenet \\
        --actors 4 --gpus-per-actor 1
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.layers import LayersConfig, run_layers
from neuromem.representations.cka import CKA_KINDS
from neuromem.representations.targets import TARGET_KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem layers``."""
    parser.add_argument("--table", required=True,
                        help="score table (or Parquet of dataset rows) with image_id and source; "
                             "its memorability and LaMem splits columns feed the read-out "
                             "(local path or URI)")
    options.add_network(parser, repeatable=True, what="network to scan",
                        old_names=("--model",))
    options.add_out(parser, what="output folder")
    parser.add_argument("--brain", default=None,
                        help="score table of the brain targets, measured or predicted, rows "
                             "matched by image_id (default: --table)")
    parser.add_argument("--targets", choices=TARGET_KINDS, default="auto",
                        help="brain targets per ROI: its vertices or its score column; auto: "
                             "vertices when the brain table has them")
    parser.add_argument("--roi", action="append", default=None, metavar="NAME",
                        help="ROI to compare with (FFA or roi_FFA), repeatable "
                             "(default: every bilateral ROI)")
    options.add_rois(parser)
    parser.add_argument("--max-vertices", type=int, default=256,
                        help="most vertices per ROI used as targets (seeded subsample)")
    parser.add_argument("--ceiling", default=None,
                        help="JSON file {ROI: ceiling}: also report ceiling-normalised "
                             "predictivity, as raw/ceiling and (raw/ceiling)^2")
    parser.add_argument("--lamem-root", default=None,
                        help="LaMem folder whose splits/ define the read-out splits "
                             "(default: the table's splits column)")
    parser.add_argument("--include", default=None, metavar="REGEX",
                        help="keep only the layers whose name matches")
    parser.add_argument("--grid", type=int, default=2, help="side of the average-pooling grid")
    parser.add_argument("--max-features", type=int, default=4096,
                        help="most values per layer; more are reduced by a random projection")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in pixels (default: each network's)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--compare", action="store_true",
                        help="also compare every pair of networks layer by layer "
                             "(CKA, unique variance)")
    parser.add_argument("--figure-roi", default=None, metavar="NAME",
                        help="ROI of the figure's x axis (default: LOC if present, else the first)")
    parser.add_argument("--cka", choices=CKA_KINDS, default="debiased",
                        help="CKA estimator: debiased (unbiased HSIC, comparable across layer "
                             "widths) or biased (plain linear CKA)")
    options.add_seed(parser, what="random weights, projections, splits and vertex subsamples")
    options.add_cluster(parser, batch_size=32)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run the layer scan and print its summary."""
    summary = run_layers(LayersConfig.from_args(args))
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
