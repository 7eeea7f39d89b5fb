"""Fine-tune a Stable Diffusion LoRA with DRaFT on the composite brain reward (Ray Train DDP).

Each of ``--workers`` Ray Train workers holds the pipeline, the LoRA and the reward; the global
batch (``--batch-size``) is split evenly across them and the LoRA gradients are averaged every
step, so the same global batch gives the same update on any number of workers. Checkpoints
(LoRA in diffusers format, optimizer state, ``run.json``) go to ``OUT/ray/NAME`` every
``--checkpoint-every`` steps; after a worker dies the workers restart from the latest one
(``--max-failures``), and ``--resume`` continues a stopped run. ``neuromem evaluate-lora --lora
OUT`` evaluates the latest checkpoint. See :mod:`neuromem.jobs.finetune`.

Examples
--------
Local, the tiny test models (seconds)::

    neuromem finetune --model tiny --encoder clip-probe:tiny --steps 4 --out runs/tiny

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m pipelines.finetune_draft --model runwayml/stable-diffusion-v1-5 \\
        --encoder clip-probe:s3://bucket/probes/probe.safetensors --reward results.json \\
        --workers 8 --gpus-per-worker 1 --steps 2000 --out s3://bucket/lora/memorable
"""

from __future__ import annotations

import argparse
import json

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.generation.draft import METHODS
from neuromem.generation.reward import CORRELATIONS
from neuromem.jobs.finetune import FinetuneConfig, run_finetune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem finetune``."""
    options.add_sd_model(parser)
    options.add_encoder(parser, help_text="brain encoder of the reward")
    parser.add_argument("--reward", default=None,
                        help="decomposition results.json or weights YAML (default: built-in "
                             "weights LOC 0.05, FFA 0.23, RSC -0.49, PPA -0.37)")
    parser.add_argument("--correlation", choices=sorted(CORRELATIONS), default="pearson",
                        help="which r of results.json gives the weights")
    parser.add_argument("--score-table", default=None,
                        help="score table of the same --encoder and --rois giving each ROI's "
                             "mean and std (default 0 and 1)")
    options.add_rois(parser)
    options.add_encoder_gradient(parser)
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt a line (default: a built-in list of 16)")
    parser.add_argument("--steps", type=int, required=True, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (samples per step over all workers; default = workers)")
    parser.add_argument("--method", choices=METHODS, default="draft1",
                        help="DRaFT variant: gradient through the last step, the last --k "
                             "steps, or re-noised copies of the last step")
    parser.add_argument("--k", type=int, default=1, help="steps with a graph for draftk")
    parser.add_argument("--lv-samples", type=int, default=2, help="re-noised copies for draftlv")
    options.add_sampling(parser, inference_steps=None, negative_prompt=False, scheduler=False)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--max-grad-norm", type=float, default=5.0,
                        help="gradient clipping norm")
    parser.add_argument("--penalty", type=float, default=0.0,
                        help="DRaFT+ weight keeping the LoRA's noise prediction near the base")
    parser.add_argument("--lora-rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=float, default=4.0, help="LoRA alpha")
    parser.add_argument("--lora-targets", default="to_k,to_q,to_v,to_out.0",
                        help="comma-separated UNet module names")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="keep activations instead of recomputing them (more memory)")
    options.add_dtype(parser, what="frozen modules (bf16 autocast runs on GPU anyway)")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="optimisation steps between checkpoints")
    options.add_seed(parser, what="the LoRA's initial values, prompts and noise")
    options.add_out(parser, what="output folder; checkpoints go to OUT/ray/NAME",
                    overwrite=False)
    parser.add_argument("--name", default="draft", help="run name under --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run --out/--name from its latest checkpoint")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="worker-group restarts from the latest checkpoint")
    options.add_cluster(parser, pool=False)
    options.add_train_workers(parser)
    options.add_progress(parser)
    parser.add_argument("--pid-dir", default=None, help=argparse.SUPPRESS)  # tests: kill a rank


def run(args: argparse.Namespace) -> int:
    """Train; print a JSON summary with the final checkpoint and its metrics."""
    print(json.dumps(run_finetune(FinetuneConfig.from_args(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
