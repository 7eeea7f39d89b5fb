"""Generate images steered towards a brain-response signature, with unguided twins (same seeds).

For each seed ``seed, seed+1, ..., seed+n-1`` the prompt is sampled twice with the same initial
noise, once by the plain pipeline and once with brain guidance, and every ROI's predicted
response is measured on both images (as saved: 8-bit PNG).

Output folder::

    unguided/seed_<S>.png     guided/seed_<S>.png
    responses.json            settings, versions, ROI responses per image, mean gains,
                              per-step guidance trace
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuromem.errors import InputError
from neuromem.generation.pipeline import SCHEDULERS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="Stable Diffusion 1.x/2.x: local folder, cached hub id, or 'tiny'")
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--target", required=True,
                        help="ROI weights to maximise, e.g. 'roi_PPA:+1,roi_RSC:-1'")
    parser.add_argument("--encoder", required=True,
                        help="brain encoder spec guiding and measuring, e.g. 'clip-probe:/p.safetensors'")
    add_guidance_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--n", type=int, default=4, help="images (seeds) (default 4)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`~neuromem.generation.guidance.GuidanceConfig` (shared by commands)."""
    parser.add_argument("--scale", type=float, required=True, help="brain guidance scale")
    parser.add_argument("--trunc-layer", type=int, default=None,
                        help="encoder depth where the gradient path stops (default: full depth)")
    parser.add_argument("--blur-sigma", type=float, default=0.0,
                        help="Gaussian blur of the pixel gradient, in pixels (default 0: none)")
    parser.add_argument("--first-step", type=int, default=0, help="first guided step (from 0)")
    parser.add_argument("--last-step", type=int, default=None,
                        help="last guided step, inclusive (default: the last step)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampler, device and ROI-set options (shared by commands)."""
    parser.add_argument("--rois", default="default", help="ROI set: 'default' or a YAML file")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--cfg-scale", type=float, default=7.5,
                        help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS),
                        help="noise scheduler (default ddim)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default: the model's native size)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def guidance_config(args: argparse.Namespace):
    """The :class:`GuidanceConfig` of parsed :func:`add_guidance_arguments` options."""
    from neuromem.generation.guidance import GuidanceConfig

    return GuidanceConfig(scale=args.scale, trunc_layer=args.trunc_layer,
                          blur_sigma=args.blur_sigma, first_step=args.first_step,
                          last_step=args.last_step)


def versions() -> dict[str, str]:
    """Versions of the packages behind a generation run."""
    import importlib.metadata

    return {pkg: importlib.metadata.version(pkg)
            for pkg in ("neuromem", "torch", "diffusers", "transformers", "open_clip_torch")}


def quantise(images_b3hw: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits and back, so measured images equal the PNG files."""
    return (images_b3hw.clamp(0, 1) * 255).round() / 255


def save_png(image_3hw: torch.Tensor, path: Path) -> None:
    """Write one ``(3, H, W)`` image in ``[0, 1]`` as an 8-bit PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels_hw3 = (image_3hw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels_hw3).save(path)


def write_json(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def rows(columns: list[str], roi_br: np.ndarray) -> list[dict[str, float]]:
    """``(B, R)`` → one ``{column: value}`` dict per image."""
    return [dict(zip(columns, map(float, roi_r), strict=True)) for roi_r in roi_br]


def run(args: argparse.Namespace) -> int:
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.generation.guidance import BrainGuidance, generate
    from neuromem.generation.objective import RoiObjective, parse_target, score_rois
    from neuromem.generation.pipeline import load_pipeline

    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    config = guidance_config(args)
    weights = parse_target(args.target)
    reducer = RoiReducer(load_roi_set(args.rois))
    objective = RoiObjective(reducer, weights)
    pipe = load_pipeline(args.model, device=device, dtype=DTYPES[args.dtype],
                         scheduler=args.scheduler)
    encoder = load_encoder(args.encoder, device=device)
    guidance = BrainGuidance(pipe, encoder, objective, config)
    seeds = list(range(args.seed, args.seed + args.n))
    prompts = [args.prompt] * args.n
    common = dict(steps=args.steps, cfg_scale=args.cfg_scale,
                  negative_prompt=args.negative_prompt, height=args.size, width=args.size)

    timings = {}
    start = time.perf_counter()
    unguided = quantise(generate(pipe, prompts, seeds, **common).images_b3hw)
    timings["unguided_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result = generate(pipe, prompts, seeds, guidance=guidance, **common)
    timings["guided_s"] = time.perf_counter() - start
    guided = quantise(result.images_b3hw)

    roi_unguided_br = score_rois(encoder, reducer, unguided)
    roi_guided_br = score_rois(encoder, reducer, guided)
    target_unguided_b = objective.from_rois(torch.from_numpy(roi_unguided_br)).numpy()
    target_guided_b = objective.from_rois(torch.from_numpy(roi_guided_br)).numpy()
    for i, seed in enumerate(seeds):
        save_png(unguided[i], args.out / "unguided" / f"seed_{seed}.png")
        save_png(guided[i], args.out / "guided" / f"seed_{seed}.png")
    columns = reducer.column_names
    payload = {
        "command": "guide",
        "command_line": sys.argv,
        "settings": {
            "model": args.model, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
            "target": weights, "encoder": encoder.metadata(), "rois": args.rois,
            "guidance": config.to_dict(), "seeds": seeds, "steps": args.steps,
            "cfg_scale": args.cfg_scale, "scheduler": args.scheduler, "size": args.size,
            "device": device, "dtype": args.dtype,
        },
        "versions": versions(),
        "columns": columns,
        "images": [
            {"seed": seed,
             "unguided_png": f"unguided/seed_{seed}.png", "guided_png": f"guided/seed_{seed}.png",
             "unguided": unguided_row, "guided": guided_row,
             "target_objective": {"unguided": float(t_u), "guided": float(t_g)}}
            for seed, unguided_row, guided_row, t_u, t_g in zip(
                seeds, rows(columns, roi_unguided_br), rows(columns, roi_guided_br),
                target_unguided_b, target_guided_b, strict=True)
        ],
        "mean": {
            "unguided": dict(zip(columns, map(float, roi_unguided_br.mean(0)), strict=True)),
            "guided": dict(zip(columns, map(float, roi_guided_br.mean(0)), strict=True)),
            "gain": dict(zip(columns, map(float, (roi_guided_br - roi_unguided_br).mean(0)),
                             strict=True)),
            "target_objective_gain": float((target_guided_b - target_unguided_b).mean()),
        },
        "timings": timings,
        "guidance_trace": [vars(record) for record in result.records],
    }
    write_json(payload, args.out / "responses.json")
    log.info("target objective gain %.4g over %d images; wrote %s",
             payload["mean"]["target_objective_gain"], args.n, args.out)
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
