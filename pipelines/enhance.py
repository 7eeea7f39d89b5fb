"""Shift an image towards a brain-response signature (brain-guided img2img), reporting before/after.

The image is resized and centre-cropped to the model's size, partly re-noised (``--strength``)
and denoised twice with the same seed: once plainly (``reconstruction.png``, what img2img alone
does) and once with brain guidance (``after.png``). ``responses.json`` holds every ROI's
predicted response to ``before.png``, ``reconstruction.png`` and ``after.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from neuromem.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.guide import add_guidance_arguments, add_sampling_arguments

    parser.add_argument("image", type=Path, help="image file (any format PIL reads)")
    parser.add_argument("--target", required=True,
                        help="ROI weights to maximise, e.g. 'roi_FFA:+1,roi_RSC:-1'")
    parser.add_argument("--model", required=True,
                        help="Stable Diffusion 1.x/2.x: local folder, cached hub id, or 'tiny'")
    parser.add_argument("--encoder", required=True, help="brain encoder spec")
    parser.add_argument("--prompt", default="", help="text prompt (default: none)")
    parser.add_argument("--strength", type=float, default=0.5,
                        help="fraction of the noise schedule re-run, in (0, 1] (default 0.5)")
    add_guidance_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def load_image(path: Path, size: int) -> torch.Tensor:
    """Read an image, resize its shorter side to ``size`` and crop the centre: ``(1, 3, size, size)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc
    scale = size / min(img.size)
    width, height = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels_hw3 = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(pixels_hw3).permute(2, 0, 1)[None].contiguous()


def run(args: argparse.Namespace) -> int:
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.generation.guidance import BrainGuidance, generate
    from neuromem.generation.objective import RoiObjective, parse_target, score_rois
    from neuromem.generation.pipeline import load_pipeline
    from pipelines.guide import (
        DTYPES,
        guidance_config,
        quantise,
        resolve_device,
        rows,
        save_png,
        versions,
        write_json,
    )

    device = resolve_device(args.device)
    config = guidance_config(args)
    weights = parse_target(args.target)
    reducer = RoiReducer(load_roi_set(args.rois))
    objective = RoiObjective(reducer, weights)
    pipe = load_pipeline(args.model, device=device, dtype=DTYPES[args.dtype],
                         scheduler=args.scheduler)
    size = args.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    before = quantise(load_image(args.image, size))
    encoder = load_encoder(args.encoder, device=device)
    common = dict(steps=args.steps, cfg_scale=args.cfg_scale,
                  negative_prompt=args.negative_prompt, init_images_b3hw=before,
                  strength=args.strength)
    reconstruction = quantise(generate(pipe, [args.prompt], [args.seed], **common).images_b3hw)
    result = generate(pipe, [args.prompt], [args.seed],
                      guidance=BrainGuidance(pipe, encoder, objective, config), **common)
    after = quantise(result.images_b3hw)

    columns = reducer.column_names
    responses = {}
    target_objective = {}
    for name, images in (("before", before), ("reconstruction", reconstruction),
                         ("after", after)):
        save_png(images[0], args.out / f"{name}.png")
        roi_br = score_rois(encoder, reducer, images)
        responses[name] = rows(columns, roi_br)[0]
        target_objective[name] = float(objective.from_rois(torch.from_numpy(roi_br))[0])
    write_json({
        "command": "enhance",
        "command_line": sys.argv,
        "settings": {
            "image": str(args.image), "model": args.model, "prompt": args.prompt,
            "target": weights, "encoder": encoder.metadata(), "rois": args.rois,
            "strength": args.strength, "guidance": config.to_dict(), "seed": args.seed,
            "steps": args.steps, "cfg_scale": args.cfg_scale, "scheduler": args.scheduler,
            "size": size, "device": device, "dtype": args.dtype,
        },
        "versions": versions(),
        "columns": columns,
        "responses": responses,
        "target_objective": target_objective,
        "change": {column: responses["after"][column] - responses["before"][column]
                   for column in columns},
        "guidance_trace": [vars(record) for record in result.records],
    }, args.out / "responses.json")
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
