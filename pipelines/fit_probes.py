"""Fit CLIP linear probes of brain responses (a score table's vertices or NSD betas).

Two kinds of targets:

- ``--targets vertices`` (default): distil an encoder into a CLIP proxy. TABLE is a score table
  written with ``--keep-vertices``; its ``vertices`` are the targets and its ``source`` column
  names the images.
- ``--targets nsd``: real fMRI. The targets are NSD single-trial betas of ``--subject`` on
  fsaverage (``--sessions``), z-scored per session and averaged over each image's repetitions
  (:mod:`neuromem.probes.nsd_betas`); the images are NSD's, matched on ``nsdId``. TABLE is
  optional here: without it the images are listed from ``--nsd-root``.

Outputs in ``--out``: ``probe.safetensors`` (``--encoder clip-probe:OUT/probe.safetensors``),
``r2.json`` (held-out R² per vertex and ROI, :mod:`neuromem.probes.report`), surface maps and
``errors.parquet`` (images that could not be read). See :mod:`neuromem.jobs.fit_probes`.
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.fit_probes import TARGET_KINDS, FitProbesConfig, run_fit_probes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem fit-probes``."""
    parser.add_argument("table", nargs="?", default=None,
                        help="score table naming the images; with --targets vertices it needs "
                             "a 'vertices' column")
    options.add_out(parser, overwrite=False, uri=False)
    parser.add_argument("--targets", choices=TARGET_KINDS, default="vertices",
                        help="what to fit: the table's vertices (distillation) or NSD betas")
    parser.add_argument("--model", default="ViT-B-32",
                        help="open_clip model name, or 'tiny' (seeded-random test model)")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip pretrained tag or local weight file; '' for random weights")
    parser.add_argument("--feature-norm", choices=["l2", "none"], default="l2",
                        help="normalise CLIP embeddings before the probe")
    parser.add_argument("--nsd-root", default=None, help="NSD root (with --targets nsd)")
    parser.add_argument("--subject", type=int, default=1, help="NSD subject 1-8")
    parser.add_argument("--sessions", default="1", help="NSD sessions, e.g. '1-40'")
    parser.add_argument("--trials-per-session", type=int, default=750,
                        help="trials per NSD session file (750 in NSD)")
    parser.add_argument("--alphas", default=None,
                        help="comma-separated ridge alphas (default: 17 values 1e-2..1e6)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of images held out for R²")
    options.add_seed(parser, what="the split, the folds and random tower weights")
    options.add_rois(parser)
    parser.add_argument("--targets-batch", type=int, default=None,
                        help="vertices solved at once by the ridge (bounds memory)")
    parser.add_argument("--no-plots", action="store_true", help="skip the surface-map PNGs")
    options.add_cluster(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Compute features, fit the probes, write the probe file and the R² report."""
    print(run_fit_probes(FitProbesConfig.from_args(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
