"""Generate images steered towards a brain-response signature, with unguided twins (same seeds).

For each seed ``seed, seed+1, ..., seed+n-1`` the prompt is sampled twice with the same initial
noise, once plainly and once with brain guidance, and every ROI's predicted response is
measured on both images as saved (8-bit PNG). Output: ``OUT/unguided/seed_<S>.png``,
``OUT/guided/seed_<S>.png``, ``OUT/responses.json`` (settings, versions, ROI responses per
image, mean gains, per-step guidance trace). See :mod:`neuromem.jobs.guide`.
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.guide import GuideConfig, run_guide


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem guide``."""
    options.add_sd_model(parser)
    parser.add_argument("--prompt", required=True, help="text prompt")
    options.add_target(parser)
    options.add_encoder(parser, help_text="brain encoder guiding and measuring")
    parser.add_argument("--n", type=int, default=4, help="images (seeds)")
    options.add_generation(parser, seed_what="the first image (image i: seed + i)")


def run(args: argparse.Namespace) -> int:
    """Generate, measure, write; print where the record is."""
    record = run_guide(GuideConfig.from_args(args))
    print(f"target objective gain {record['mean']['target_objective_gain']:.4g} over "
          f"{len(record['images'])} images; wrote {args.out}/responses.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
