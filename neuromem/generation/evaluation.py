"""Base model against its DRaFT LoRA on held-out prompts: images, scores, paired summary, report.

For every prompt and seed, the base pipeline and the pipeline with the LoRA generate an image
from the same initial noise (DDIM, classifier-free guidance). Each image gets

- the composite reward and every ROI's mean response (the brain encoder the LoRA was trained on);
- ResMem memorability: an independent assessor, not part of the reward, so a rise here is
  evidence the adapter did more than please its own reward model;
- CLIP prompt fidelity: cosine similarity of the open_clip image and prompt embeddings.

:func:`evaluate` returns the ``evaluation.json`` content; :func:`write_report` writes it with
``per_image.csv``, ``report.md``, ``grid.png`` (one row per prompt and seed: base left, LoRA
right) and every image as ``base/<png>`` and ``lora/<png>`` (the same name for twins, so
``neuromem game make --condition base=OUT/base --condition lora=OUT/lora`` pairs them).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuromem.errors import InputError

#: ``--clip`` when not given: the test model for ``--model tiny``, else ViT-L/14 (OpenAI).
TINY_CLIP, DEFAULT_CLIP = "open_clip:tiny", "open_clip:ViT-L-14@openai"
#: What the evaluation writes into its output folder.
OUTPUTS = ("evaluation.json", "per_image.csv", "report.md", "grid.png")


#: ``--seeds`` when not given: one for ``--model tiny`` (a run of seconds), else four.
TINY_SEEDS, DEFAULT_SEEDS = (0,), (0, 1, 2, 3)


def clip_for(model: str, clip: str | None = None) -> str:
    """The CLIP spec of prompt fidelity: ``clip`` when given, else the model's default."""
    from neuromem.generation.pipeline import TINY

    return clip or (TINY_CLIP if model == TINY else DEFAULT_CLIP)


def seeds_for(model: str, seeds: tuple[int, ...] | None = None) -> list[int]:
    """The noise seeds drawn for every prompt: ``seeds`` when given, else the model's default."""
    from neuromem.generation.pipeline import TINY

    return list(seeds or (TINY_SEEDS if model == TINY else DEFAULT_SEEDS))


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
    encoder: str, reward: dict[str, Any], roi_set: str = "default",
    num_inference_steps: int = 50, guidance_scale: float = 7.5, size: int | None = None,
    clip: str = DEFAULT_CLIP, assessor: str = "resmem", batch_size: int = 4,
    device: str | torch.device = "cpu", progress: bool = False,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Generate base and LoRA images and score both.

    Parameters
    ----------
    model : str
        Stable Diffusion folder, hub id or ``tiny``.
    lora_dir : str or Path
        Local checkpoint folder (``pipe.load_lora_weights`` reads it).
    prompts, seeds : list
        Every prompt is drawn with every seed (prompt-major).
    encoder : str
        Brain encoder spec of the reward.
    reward : dict
        :meth:`RewardSpec.to_dict`.
    roi_set : str
    num_inference_steps, guidance_scale, size
        DDIM sampling (``size`` None: the model's native size).
    clip : str
        open_clip spec of prompt fidelity (:func:`neuromem.networks.load_clip`).
    assessor : {"resmem", "none"}
    batch_size : int
        Images per model call.
    device : str or torch.device
    progress : bool
        Draw bars (images generated; images scored).

    Returns
    -------
    evaluation : dict
        The ``evaluation.json`` content (settings, per-image rows, paired summary).
    base_b3hw, lora_b3hw : torch.Tensor
        The images, ``(P*S, 3, size, size)`` in [0, 1].
    """
    from neuromem.generation.pipeline import load_pipeline, native_size
    from neuromem.generation.reward import RewardSpec, build_composite_reward
    from neuromem.networks import load_clip
    from neuromem.runtime.progress import progress_bar

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
    rows = [{"prompt": prompt_of[i], "seed": seed_of[i],
             "png": f"p{prompts.index(prompt_of[i]):03d}_seed{seed_of[i]}.png",
             **{f"{label}_{k}": float(v[i]) for label in scores for k, v in scores[label].items()}}
            for i in range(len(prompt_of))]
    return {
        "model": model, "encoder": encoder, "reward": spec.to_dict(), "prompts": prompts,
        "seeds": seeds, "settings": {**options, "scheduler": "ddim"}, "rois": roi_set,
        "clip": clip, "assessor": assessor,
        "summary": summarise(scores["base"], scores["lora"]), "images": rows,
    }, base, adapted


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


def png_bytes(image_3hw: torch.Tensor) -> bytes:
    """One ``(3, H, W)`` image in ``[0, 1]`` as 8-bit PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels_hw3 = (image_3hw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    Image.fromarray(pixels_hw3.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(base_b3hw: torch.Tensor, lora_b3hw: torch.Tensor) -> bytes:
    """PNG bytes with one row per image: base on the left, LoRA on the right."""

    rows_b3hw = torch.cat([base_b3hw, lora_b3hw], dim=-1)  # base | LoRA side by side
    return png_bytes(torch.cat(list(rows_b3hw), dim=1))  # rows stacked vertically


def report_lines(evaluation: dict[str, Any]) -> list[str]:
    """``report.md``: settings, then one table row per metric."""
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
    return [*lines, "", "![base (left) vs LoRA (right), one row per prompt and seed](grid.png)",
            ""]


def write_report(evaluation: dict[str, Any], base_b3hw: torch.Tensor, lora_b3hw: torch.Tensor,
                 out: str) -> None:
    """Write :data:`OUTPUTS` into ``out`` (local path or URI; each file atomically)."""
    import pandas as pd

    from neuromem.runtime.storage import join_uri, write_bytes, write_json, write_text

    write_json(join_uri(out, "evaluation.json"), evaluation)
    write_text(join_uri(out, "per_image.csv"), pd.DataFrame(evaluation["images"]).to_csv(index=False))
    write_text(join_uri(out, "report.md"), "\n".join(report_lines(evaluation)))
    write_bytes(join_uri(out, "grid.png"), grid_png(base_b3hw, lora_b3hw))
    for row, base_3hw, lora_3hw in zip(evaluation["images"], base_b3hw, lora_b3hw, strict=True):
        for label, image_3hw in (("base", base_3hw), ("lora", lora_3hw)):
            write_bytes(join_uri(out, label, row["png"]), png_bytes(image_3hw))
