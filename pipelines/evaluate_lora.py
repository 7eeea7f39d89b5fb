"""Compare a DRaFT LoRA with its base model on held-out prompts: brain reward, ResMem, CLIP.

For every held-out prompt and seed, the base pipeline and the pipeline with the LoRA generate
an image from the same initial noise. Each image gets the composite reward and every ROI's mean
response, ResMem memorability (an independent assessor, not part of the reward) and CLIP prompt
fidelity. ``--lora`` is a checkpoint folder or the ``finetune --out`` folder itself (its latest
checkpoint); the encoder, ROI set and reward default to the checkpoint's ``run.json``.

Writes ``OUT/evaluation.json`` (settings, reward weights, per-image rows, paired summaries),
``OUT/report.md``, ``OUT/per_image.csv`` and ``OUT/grid.png`` (one row per prompt and seed:
base left, LoRA right). See :mod:`neuromem.jobs.evaluate_lora`.

Example::

    neuromem finetune --model tiny --encoder clip-probe:tiny --steps 4 --out runs/tiny
    neuromem evaluate-lora --model tiny --lora runs/tiny --out eval/tiny
"""

from __future__ import annotations

import argparse
import json

from neuromem.cli import run_module
from neuromem.commands import options
from neuromem.generation.evaluation import DEFAULT_CLIP, TINY_CLIP
from neuromem.generation.reward import CORRELATIONS
from neuromem.jobs.evaluate_lora import ASSESSORS, EvaluateLoraConfig, run_evaluate_lora


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem evaluate-lora``."""
    options.add_sd_model(parser)
    parser.add_argument("--lora", required=True,
                        help="a checkpoint folder (holding pytorch_lora_weights.safetensors) or "
                             "a finetune --out folder (its latest checkpoint); path or URI")
    options.add_encoder(parser, required=False,
                        help_text="brain encoder (default: the one in the checkpoint's run.json)")
    parser.add_argument("--reward", default=None,
                        help="results.json or weights YAML (default: the checkpoint's reward)")
    parser.add_argument("--correlation", choices=sorted(CORRELATIONS), default="pearson",
                        help="with a results.json --reward: which r gives the weights")
    parser.add_argument("--score-table", default=None,
                        help="score table of the same encoder and ROI set for ROI mean and std")
    parser.add_argument("--rois", default=None, metavar="SET",
                        help="ROI set: 'default' or a YAML file (default: the checkpoint's)")
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt a line (default: 8 built-in held-out prompts)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="noise seeds; every prompt is drawn with each (default: 0 for "
                             "'tiny', else 0 1 2 3)")
    options.add_sampling(parser, inference_steps=None, negative_prompt=False, scheduler=False)
    parser.add_argument("--clip", default=None, metavar="SPEC",
                        help="open_clip model of prompt fidelity, open_clip:NAME[@WEIGHTS] "
                             f"(default: {TINY_CLIP} for 'tiny', else {DEFAULT_CLIP})")
    parser.add_argument("--assessor", choices=ASSESSORS, default="resmem",
                        help="independent memorability assessor")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    options.add_device(parser)
    options.add_out(parser, overwrite=False)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate; print the paired summary per metric."""
    evaluation = run_evaluate_lora(EvaluateLoraConfig.from_args(args))
    print(json.dumps(evaluation["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
