"""Shift an image towards a brain-response signature (brain-guided img2img), reporting before/after.

The image is resized and centre-cropped to the model's size, partly re-noised (``--strength``)
and denoised twice with the same seed: plainly (``reconstruction.png``, what img2img alone does)
and with brain guidance (``after.png``). ``responses.json`` holds every ROI's predicted response
to ``before.png``, ``reconstruction.png`` and ``after.png``; ``change`` is after minus the
unguided reconstruction. See :mod:`neuromem.jobs.guide`.
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.guide import EnhanceConfig, run_enhance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem enhance``."""
    parser.add_argument("image", help="image file (any format PIL reads)")
    options.add_target(parser)
    options.add_sd_model(parser)
    options.add_encoder(parser, help_text="brain encoder guiding and measuring")
    parser.add_argument("--prompt", default="", help="text prompt (default: none)")
    parser.add_argument("--strength", type=float, default=0.5,
                        help="fraction of the noise schedule re-run, in (0, 1]")
    options.add_generation(parser, seed_what="the re-noising")


def run(args: argparse.Namespace) -> int:
    """Enhance, measure, write; print the target objective before and after."""
    record = run_enhance(EnhanceConfig.from_args(args))
    objective = record["target_objective"]
    print(f"target objective: before {objective['before']:.4g}, unguided img2img "
          f"{objective['reconstruction']:.4g}, guided {objective['after']:.4g}; "
          f"wrote {args.out}/responses.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
