"""Compare a DRaFT LoRA with its base model on held-out prompts: brain reward, ResMem, CLIP.

For every held-out prompt and fixed seed, the base pipeline and the pipeline with the LoRA
generate an image from the same initial noise (DDIM, classifier-free guidance). Each image gets

- the composite reward and every ROI's mean response (the brain encoder the LoRA was trained on);
- ResMem memorability: an independent assessor, not part of the reward, so a rise here is
  evidence the adapter did more than please its own reward model;
- CLIP prompt fidelity: cosine similarity of the open_clip image and prompt embeddings.

Writes ``OUT/evaluation.json`` (settings, reward weights, per-image rows, paired summaries),
``OUT/report.md``, ``OUT/per_image.csv`` and ``OUT/grid.png`` (one row per prompt and seed:
base left, LoRA right).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuromem.commands import options
from neuromem.errors import InputError

logger = logging.getLogger(__name__)

# Held out from the training prompts of `neuromem finetune` (BUILTIN_PROMPTS there).
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a portrait of a young woman wearing a hat",
    "a wooden bridge over a river",
    "a pair of running shoes on a doormat",
    "a subway station platform",
    "a cat sleeping on a sofa",
    "a wheat field under storm clouds",
    "a chef cooking in a restaurant kitchen",
    "a lighthouse on a rocky coast",
)

#: ``--clip`` when not given: the test model for ``--model tiny``, else ViT-L/14 (OpenAI).
TINY_CLIP, DEFAULT_CLIP = "open_clip:tiny", "open_clip:ViT-L-14@openai"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem evaluate-lora``."""
    options.add_sd_model(parser)
    parser.add_argument("--lora", required=True,
                        help="a checkpoint folder (holding pytorch_lora_weights.safetensors) or "
                             "a finetune --out folder (its latest checkpoint); path or URI")
    options.add_encoder(parser, required=False,
                        help_text="brain encoder (default: the one in the checkpoint's run.json)")
    parser.add_argument("--reward", default=None,
                        help="results.json or weights YAML (default: the checkpoint's reward)")
    parser.add_argument("--correlation", choices=["pearson", "partial"], default="pearson",
                        help="with a results.json --reward: which r gives the weights")
    parser.add_argument("--score-table", default=None,
                        help="score table of the same encoder and ROI set for ROI mean and std")
    parser.add_argument("--rois", default=None, metavar="SET",
                        help="ROI set: 'default' or a YAML file (default: the checkpoint's)")
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt a line (default: 8 built-in held-out prompts)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="noise seeds; every prompt is drawn with each")
    options.add_sampling(parser, inference_steps=None, negative_prompt=False, scheduler=False)
    parser.add_argument("--clip", default=None, metavar="SPEC",
                        help="open_clip model of prompt fidelity, open_clip:NAME[@WEIGHTS] "
                             f"(default: {TINY_CLIP} for 'tiny', else {DEFAULT_CLIP})")
    parser.add_argument("--assessor", choices=["resmem", "none"], default="resmem",
                        help="independent memorability assessor")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    options.add_device(parser)
    parser.add_argument("--out", required=True, help="output folder")
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``neuromem evaluate-lora``."""
    from neuromem.generation.draft import (
        RUN_RECORD,
        find_lora_checkpoint,
        local_checkpoint,
        read_prompts,
    )
    from neuromem.generation.pipeline import TINY, inference_steps_for
    from neuromem.runtime.device import resolve_device

    prompts = list(HELD_OUT_PROMPTS) if args.prompts is None else read_prompts(args.prompts)
    checkpoint = find_lora_checkpoint(args.lora)
    with local_checkpoint(checkpoint) as lora_dir:
        record_path = Path(lora_dir, RUN_RECORD)
        trained = json.loads(record_path.read_text()) if record_path.exists() else {}
        encoder = args.encoder or trained.get("encoder")
        rois = args.rois or trained.get("rois") or trained.get("roi_set") or "default"
        evaluation = evaluate(
            model=args.model, lora_dir=lora_dir, prompts=prompts, seeds=args.seeds,
            encoder=encoder, reward=_reward_record(args, trained, encoder, rois), roi_set=rois,
            num_inference_steps=inference_steps_for(args.model, args.inference_steps),
            guidance_scale=args.cfg_scale, size=args.size,
            clip=args.clip or (TINY_CLIP if args.model == TINY else DEFAULT_CLIP),
            assessor=args.assessor, batch_size=args.batch_size,
            device=resolve_device(args.device), out=Path(args.out),
            progress=not args.no_progress,
        )
    evaluation["lora"] = checkpoint
    evaluation["training_run"] = {k: trained[k] for k in ("step", "settings") if k in trained}
    write_report(evaluation, Path(args.out))
    print(json.dumps(evaluation["summary"], indent=2))
    return 0


def _reward_record(args: argparse.Namespace, trained: dict[str, Any], encoder: str | None,
                   rois: str) -> dict[str, Any]:
    from neuromem.generation.reward import load_reward_spec

    if args.reward is None and "reward" in trained and args.score_table is None:
        return trained["reward"]
    return load_reward_spec(args.reward, correlation=args.correlation,
                            score_table=args.score_table, encoder=encoder,
                            roi_set=rois).to_dict()


@torch.no_grad()
def clip_fidelity(clip, images_b3hw: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """Cosine similarity of each image with its prompt in open_clip space, shape ``(B,)``.

    ``clip`` is a :class:`neuromem.networks.LoadedClip`.
    """
    device = next(clip.module.parameters()).device
    image_be = clip.module.encode_image(clip.preprocess(images_b3hw).to(device), normalize=True)
    text_be = clip.module.encode_text(clip.tokenizer(prompts).to(device), normalize=True)
    return (image_be * text_be).sum(-1).float().cpu().numpy()


def generate(pipe, prompts: list[str], seeds: list[int], *, num_inference_steps: int,
             guidance_scale: float, size: int, batch_size: int, bar=None) -> torch.Tensor:
    """Images for every (prompt, seed), prompt-major, shape ``(P*S, 3, size, size)`` in [0, 1].

    Sample ``(p, s)`` starts from the noise of ``sample_seed(s, p)``, so base and LoRA share it.
    ``bar``, a progress bar, advances by one per image.
    """
    from neuromem.generation.draft import gaussian, sample_seed

    pairs = [(p, s) for p in range(len(prompts)) for s in seeds]
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, size // scale, size // scale)
    images = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        latents = gaussian([sample_seed(s, p) for p, s in chunk], shape, pipe.device,
                           pipe.unet.dtype)
        out = pipe(prompt=[prompts[p] for p, _ in chunk], latents=latents, height=size,
                   width=size, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, output_type="pt")
        images.append(out.images.float().cpu())
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(images)


def evaluate(
    *, model: str, lora_dir: str | Path, prompts: list[str], seeds: list[int],
    encoder: str | None, reward: dict[str, Any], roi_set: str = "default",
    num_inference_steps: int = 50, guidance_scale: float = 7.5, size: int | None = None,
    clip: str = DEFAULT_CLIP, assessor: str = "resmem", batch_size: int = 4,
    device: str | torch.device = "cpu", out: Path | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Generate base and LoRA images and score both; returns the ``evaluation.json`` content.

    ``size`` None is the model's native size. When ``out`` is given, the image grid is written
    there as ``grid.png``. ``progress`` draws bars (images generated; images scored).
    """
    from neuromem.generation.pipeline import load_pipeline, native_size
    from neuromem.generation.reward import RewardSpec, build_composite_reward
    from neuromem.networks import load_clip
    from neuromem.runtime.progress import progress_bar

    if encoder is None:
        raise InputError("no --encoder given and the checkpoint has no run.json naming one")
    if not prompts or not seeds:
        raise InputError("need at least one prompt and one seed")
    spec = RewardSpec.from_dict(reward)
    pipe = load_pipeline(model, device=device, scheduler="ddim")
    size = size or native_size(pipe)
    options = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   size=size, batch_size=batch_size)
    n_images = len(prompts) * len(seeds)
    with progress_bar(2 * n_images, desc="generating base and LoRA", unit="img",
                      enabled=progress) as bar:
        base = generate(pipe, prompts, seeds, bar=bar, **options)
        pipe.load_lora_weights(str(lora_dir))
        adapted = generate(pipe, prompts, seeds, bar=bar, **options)
    del pipe

    brain = build_composite_reward(encoder, spec, device=device, roi_set=roi_set)
    clip_model = load_clip(clip, device=device)
    resmem = None
    if assessor == "resmem":
        from neuromem.memorability import ResMemAssessor

        resmem = ResMemAssessor(device)
    scorers = f"reward{', ' + assessor if resmem is not None else ''}, CLIP"
    prompt_of = [p for p in prompts for _ in seeds]
    seed_of = [s for _ in prompts for s in seeds]
    scores: dict[str, dict[str, np.ndarray]] = {}
    with progress_bar(2 * n_images, desc=f"scoring ({scorers})", unit="img",
                      enabled=progress) as bar:
        for label, images in (("base", base), ("lora", adapted)):
            parts: dict[str, list[np.ndarray]] = {}
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                for name, values in score_images(brain, resmem, clip_model, chunk.to(device),
                                                 prompt_of[i:i + batch_size]).items():
                    parts.setdefault(name, []).append(values)
                bar.update(len(chunk))
            scores[label] = {name: np.concatenate(values) for name, values in parts.items()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_grid(base, adapted, out / "grid.png")
    rows = [{"prompt": prompt_of[i], "seed": seed_of[i],
             **{f"{label}_{k}": float(v[i]) for label in scores for k, v in scores[label].items()}}
            for i in range(len(prompt_of))]
    return {
        "model": model, "encoder": encoder, "reward": spec.to_dict(), "prompts": prompts,
        "seeds": seeds, "settings": {**options, "scheduler": "ddim"}, "rois": roi_set,
        "clip": clip, "assessor": assessor,
        "summary": summarise(scores["base"], scores["lora"]), "images": rows,
    }


@torch.no_grad()
def score_images(brain, resmem, clip, images_b3hw: torch.Tensor,
                 prompts: list[str]) -> dict[str, np.ndarray]:
    """Every metric of one batch of images: reward, ROI means, ResMem, CLIP fidelity, ``(B,)``."""
    rois_br = brain.roi_responses(images_b3hw).cpu().double()
    columns = {"reward": brain.from_roi_responses(rois_br).numpy()}
    columns.update({c: rois_br[:, j].numpy() for j, c in enumerate(brain.column_names)})
    if resmem is not None:
        columns["resmem"] = resmem.score(images_b3hw).cpu().double().numpy()
    columns["clip_fidelity"] = clip_fidelity(clip, images_b3hw, prompts)
    return columns


def summarise(base: dict[str, np.ndarray], lora: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired comparison per metric: means, mean difference, its SD and a paired t-test."""
    from scipy import stats

    summary = {}
    for name in base:
        diff = lora[name] - base[name]
        n = len(diff)
        test = stats.ttest_rel(lora[name], base[name]) if n > 1 and np.ptp(diff) > 0 else None
        summary[name] = {
            "base_mean": float(base[name].mean()), "lora_mean": float(lora[name].mean()),
            "mean_difference": float(diff.mean()),
            "sd_difference": float(diff.std(ddof=1)) if n > 1 else None,
            "fraction_improved": float((diff > 0).mean()), "n": n,
            "paired_t": float(test.statistic) if test else None,
            "p_value": float(test.pvalue) if test else None,
        }
    return summary


def save_grid(base_b3hw: torch.Tensor, lora_b3hw: torch.Tensor, path: Path) -> None:
    """PNG with one row per image: base on the left, LoRA on the right."""
    from PIL import Image

    rows_bhw3 = torch.cat([base_b3hw, lora_b3hw], dim=-1).permute(0, 2, 3, 1)
    grid_hw3 = (rows_bhw3.reshape(-1, *rows_bhw3.shape[2:]).clamp(0, 1) * 255).round()
    Image.fromarray(grid_hw3.to(torch.uint8).numpy()).save(path)


def write_report(evaluation: dict[str, Any], out: Path) -> None:
    """Write ``evaluation.json``, ``per_image.csv`` and ``report.md`` into ``out``."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    pd.DataFrame(evaluation["images"]).to_csv(out / "per_image.csv", index=False)
    reward = evaluation["reward"]
    lines = [
        "# LoRA evaluation: base vs LoRA",
        "",
        f"- model `{evaluation['model']}`, LoRA `{evaluation.get('lora', '')}`",
        f"- encoder `{evaluation['encoder']}`, ROI set `{evaluation['rois']}`",
        f"- reward weights {reward['weights']} (source {reward['source']}, "
        f"correlation {reward['correlation']}), mean {reward['mean']}, std {reward['std']}",
        f"- {len(evaluation['prompts'])} held-out prompts × seeds {evaluation['seeds']}; "
        f"settings {evaluation['settings']}",
        f"- CLIP fidelity: `{evaluation['clip']}`; "
        f"memorability assessor: {evaluation['assessor']} (independent of the reward)",
        "",
        "| metric | base | LoRA | mean diff | SD diff | improved | paired t | p |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value):
        return "–" if value is None else f"{value:.4g}"

    for name, row in evaluation["summary"].items():
        lines.append(
            f"| {name} | {fmt(row['base_mean'])} | {fmt(row['lora_mean'])} | "
            f"{fmt(row['mean_difference'])} | {fmt(row['sd_difference'])} | "
            f"{row['fraction_improved']:.0%} | {fmt(row['paired_t'])} | {fmt(row['p_value'])} |"
        )
    lines += ["", "![base (left) vs LoRA (right), one row per prompt and seed](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
