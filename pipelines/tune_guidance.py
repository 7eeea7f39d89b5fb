"""Search brain-guidance settings with Ray Tune (ASHA), each trial pinned to a GPU type.

The search YAML (e.g. ``tune_configs/guidance.yaml``) is documented in
:mod:`neuromem.generation.tuning`; trials, resources and outputs (``trials.parquet``,
``best_config.yaml``, ``ray_results/``) in :mod:`neuromem.jobs.tune_guidance`.

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.tune_guidance --config tune_configs/guidance.yaml --out /shared/tune
"""

from __future__ import annotations

import argparse

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.jobs.tune_guidance import TuneGuidanceConfig, run_tune_guidance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem tune-guidance``."""
    parser.add_argument("--config", required=True,
                        help="search YAML, local path or URI (see tune_configs/guidance.yaml)")
    options.add_out(parser, overwrite=False, uri=False)
    options.add_cluster(parser, pool=False)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Search and print the best settings."""
    summary = run_tune_guidance(TuneGuidanceConfig.from_args(args))
    print(f"best score {summary['metrics']['score']:.4g} with {summary['guide']}; "
          f"wrote {args.out}/best_config.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
