"""Decompose memorability by brain region: ROI and vertex correlations, category control, spin tests.

Reads one or more score tables (the first is the primary one; the others, e.g. BOLD5000
measurements or CLIP-probe predictions, are compared with it) and writes ``results.json``,
``report.md``, ``report.html`` and PNG figures to ``--out`` (see :mod:`neuromem.jobs.decompose`).
With ``--vertices`` the primary table's ``vertices`` column is correlated with memorability
vertex by vertex in one streaming pass; with Ray (``--ray``, or when a Ray session is already
running) that pass is a map-reduce over the table's files. On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.decompose s3://bucket/lamem_tribev2 --out s3://bucket/results \\
        --vertices --ray
"""

from __future__ import annotations

import argparse

from neuromem.analysis.correlation import N_BOOTSTRAP, SPEARMAN_CI_METHODS
from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.decompose import DecomposeConfig, run_decompose
from neuromem.runtime.storage import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem decompose``."""
    parser.add_argument("tables", nargs="+", metavar="TABLE",
                        help="score tables (folder, file or URI); the first is the primary one")
    options.add_out(parser, what="output folder")
    parser.add_argument("--memorability", default="memorability", help="memorability column")
    parser.add_argument("--category", default=None,
                        help="category column (default: 'category' when the table has it)")
    parser.add_argument("--covariates", default="",
                        help="comma-separated numeric columns to control for as well")
    parser.add_argument("--vertices", action="store_true",
                        help="vertex-level correlations (raw and, with a category or covariates, "
                             "partial), sign coherence and spin tests with the medial wall left "
                             "out (needs a table scored with --keep-vertices)")
    parser.add_argument("--spins", type=int, default=1000,
                        help="random rotations of the spin test (0: no spin test)")
    options.add_seed(parser, what="bootstraps and spins")
    parser.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP,
                        help="resamples of the Spearman BCa interval (0: none; else >= 100)")
    parser.add_argument("--spearman-ci", choices=SPEARMAN_CI_METHODS, default="auto",
                        help="Spearman interval: analytic (Fisher z, Bonett-Wright SE), bootstrap "
                             "(BCa), or auto: analytic from 2,000 rows on, BCa below")
    options.add_rois(parser)
    parser.add_argument("--ray", action="store_true",
                        help="run the vertex pass as Ray tasks, one per file")
    options.add_cluster(parser, pool=False)
    parser.add_argument("--summary-json", default=None,
                        help="also write the run summary (stage seconds) as JSON to this file")
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Decompose and print the summary."""
    summary = run_decompose(DecomposeConfig.from_args(args))
    print(summary.format())
    if args.summary_json:
        write_json(args.summary_json, summary.to_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
