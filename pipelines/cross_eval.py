"""Cross-evaluate brain guidance: images maximising each ROI under encoder A, measured by encoder B.

For every target ROI the prompt is sampled with the same seeds under guidance that maximises it
as predicted by the guiding encoder A; encoder B measures every target ROI on the images. The
normalisation and the specificity ranks are documented in :mod:`neuromem.generation.crosseval`.
Output: ``cross_eval.json``, ``cross_eval.png`` (heatmap under B), ``images/<target>/``.
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.guide import CrossEvalConfig, run_cross_eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem cross-eval``."""
    options.add_sd_model(parser)
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--guide-encoder", required=True, metavar="SPEC",
                        help="encoder A, which guides (an --encoder spec)")
    parser.add_argument("--eval-encoder", required=True, metavar="SPEC",
                        help="encoder B, which measures (an --encoder spec)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated ROIs, with or without roi_ (default: the set's "
                             "bilateral ROIs)")
    parser.add_argument("--n", type=int, default=4, help="images per target")
    options.add_generation(parser, seed_what="the first image of every target (image i: seed + i)")


def run(args: argparse.Namespace) -> int:
    """Generate per target, measure under both encoders, write the matrices and the heatmap."""
    record = run_cross_eval(CrossEvalConfig.from_args(args))
    measured = record["eval_encoder"]
    print(f"mean diagonal rank {measured['mean_diagonal_rank_in_row']:.2f} "
          f"(chance {measured['chance_rank']:.2f}); wrote {args.out}/cross_eval.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
