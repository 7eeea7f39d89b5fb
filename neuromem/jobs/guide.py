"""``neuromem guide``, ``enhance`` and ``cross-eval``: brain-guided Stable Diffusion runs.

Each samples with diffusers' own loop on one device (no Ray), once without and once with brain
guidance from the same seeds, measures every ROI on the images as saved (8-bit PNG), and writes
a JSON record with the settings, versions and the guidance trace.

- ``guide``: ``--n`` images of one prompt; ``OUT/unguided/seed_<S>.png``,
  ``OUT/guided/seed_<S>.png``, ``OUT/responses.json``.
- ``enhance``: one given image, partly re-noised (``--strength``) and denoised plainly
  (``reconstruction.png``: what img2img alone does) and with guidance (``after.png``).
  ``change`` is after − reconstruction (the guidance's effect, the img2img round trip cancels),
  ``change_from_original`` after − before; both are recorded.
- ``cross-eval``: images maximising each target ROI under encoder A, measured by encoder B
  (:mod:`neuromem.generation.crosseval`); ``OUT/cross_eval.json``, ``OUT/cross_eval.png``,
  ``OUT/images/<target>/``.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.errors import InputError
from neuromem.runtime.config import JobConfig
from neuromem.runtime.progress import track
from neuromem.runtime.provenance import command_line, utc_now, versions
from neuromem.runtime.storage import check_writable, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(JobConfig):
    """Sampling and guidance settings shared by the generation commands.

    Attributes
    ----------
    model : str
        Stable Diffusion 1.x/2.x: local folder, cached hub id, or ``tiny``.
    out : str
        Output folder (local).
    scale, trunc_layer, surrogate_layer, blur_sigma, first_step, last_step, grad_path, \
    normalize_grad
        Brain guidance (:class:`neuromem.generation.guidance.GuidanceConfig`).
    rois : str
        ROI set (``default`` or a YAML file).
    seed : int
        First seed; image ``i`` starts from the noise of seed ``seed + i``.
    inference_steps : int or None
        Denoising steps; None: 4 for ``tiny``, else 50.
    cfg_scale : float
        Classifier-free guidance scale.
    negative_prompt : str or None
    size : int or None
        Image side in pixels; None: the model's native size.
    scheduler, device, dtype : str
    """

    model: str
    out: str
    scale: float
    trunc_layer: int | None = None
    surrogate_layer: int | None = None
    blur_sigma: float = 0.0
    first_step: int = 0
    last_step: int | None = None
    grad_path: str = "x0"
    normalize_grad: bool = False
    rois: str = "default"
    seed: int = 0
    inference_steps: int | None = None
    cfg_scale: float = 7.5
    negative_prompt: str | None = None
    size: int | None = None
    scheduler: str = "ddim"
    device: str = "auto"
    dtype: str = "float32"

    @property
    def steps(self) -> int:
        """Denoising steps, resolved from the model when not given."""
        from neuromem.generation.pipeline import inference_steps_for

        return inference_steps_for(self.model, self.inference_steps)

    def check(self) -> None:
        """Raise :class:`InputError` for values no run can use (before any model loads)."""
        from neuromem.runtime.device import resolve_dtype

        self.require_at_least(1, "inference_steps")
        self.require_at_least(8, "size")
        self.require_local("out")
        if self.cfg_scale < 0:
            raise InputError(f"--cfg-scale must be >= 0, got {self.cfg_scale}")
        self.guidance()  # checks scale, blur and the step range
        resolve_dtype(self.dtype)

    def guidance(self):
        """The :class:`~neuromem.generation.guidance.GuidanceConfig` of these settings."""
        from neuromem.generation.guidance import GuidanceConfig

        return GuidanceConfig(scale=self.scale, trunc_layer=self.trunc_layer,
                              surrogate_layer=self.surrogate_layer, blur_sigma=self.blur_sigma,
                              first_step=self.first_step, last_step=self.last_step,
                              grad_path=self.grad_path, normalize_grad=self.normalize_grad)

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :func:`neuromem.generation.guidance.generate`."""
        return {"steps": self.steps, "cfg_scale": self.cfg_scale,
                "negative_prompt": self.negative_prompt}

    def record(self) -> dict[str, Any]:
        """The settings as recorded in the output (denoising steps resolved)."""
        return {**self.to_dict(), "inference_steps": self.steps,
                "guidance": self.guidance().to_dict()}


@dataclass(frozen=True, kw_only=True)
class GuideConfig(GenerationConfig):
    """``neuromem guide``: ``n`` guided images of ``prompt`` and their unguided twins."""

    prompt: str
    target: str
    encoder: str
    n: int = 4

    def check(self) -> None:
        from neuromem.generation.objective import parse_target

        super().check()
        self.require_at_least(1, "n")
        parse_target(self.target)


@dataclass(frozen=True, kw_only=True)
class EnhanceConfig(GenerationConfig):
    """``neuromem enhance``: one image shifted towards ``target`` by guided img2img."""

    image: str
    target: str
    encoder: str
    prompt: str = ""
    strength: float = 0.5

    def check(self) -> None:
        from neuromem.generation.objective import parse_target

        super().check()
        if not 0 < self.strength <= 1:
            raise InputError(f"--strength must be in (0, 1], got {self.strength}")
        if not Path(self.image).is_file():
            raise InputError(f"image {self.image!r} does not exist")
        parse_target(self.target)


@dataclass(frozen=True, kw_only=True)
class CrossEvalConfig(GenerationConfig):
    """``neuromem cross-eval``: images maximising each target ROI under ``guide_encoder``,
    measured by ``eval_encoder``."""

    prompt: str
    guide_encoder: str
    eval_encoder: str
    targets: str | None = None
    n: int = 4

    def check(self) -> None:
        super().check()
        self.require_at_least(1, "n")


class _Generator:
    """The loaded pipeline with what every generation command does with it."""

    def __init__(self, config: GenerationConfig):
        from neuromem.cortex.reduce import RoiReducer
        from neuromem.cortex.rois import load_roi_set
        from neuromem.runtime.device import resolve_device

        self.config = config
        self.device = str(resolve_device(config.device))
        self.reducer = RoiReducer(load_roi_set(config.rois))

    @functools.cached_property
    def pipe(self):
        """The Stable Diffusion pipeline, loaded on first use (after the cheap checks)."""
        from neuromem.generation.pipeline import load_pipeline
        from neuromem.runtime.device import resolve_dtype

        return load_pipeline(self.config.model, device=self.device,
                             dtype=resolve_dtype(self.config.dtype),
                             scheduler=self.config.scheduler)

    def encoder(self, spec: str):
        from neuromem.encoders import load_encoder

        return load_encoder(spec, device=self.device)

    def sample(self, prompts: list[str], seeds: list[int], *, guidance=None, **extra):
        """``(images_b3hw as saved, Generation)``."""
        from neuromem.generation.guidance import generate
        from neuromem.generation.outputs import quantise

        result = generate(self.pipe, prompts, seeds, guidance=guidance,
                          **self.config.sampling(), **extra)
        return quantise(result.images_b3hw), result

    def guidance(self, encoder, objective):
        from neuromem.generation.guidance import BrainGuidance

        return BrainGuidance(self.pipe, encoder, objective, self.config.guidance())

    def measure(self, encoder, images_b3hw) -> np.ndarray:
        """``(B, R)`` ROI responses of the images."""
        from neuromem.generation.objective import score_rois

        return score_rois(encoder, self.reducer, images_b3hw)


def _header(command: str, config: GenerationConfig, **settings: Any) -> dict[str, Any]:
    from neuromem.generation.outputs import GENERATION_PACKAGES

    return {"command": command, "command_line": command_line(), "created": utc_now(),
            "settings": {**config.record(), **settings},
            "versions": versions(GENERATION_PACKAGES)}


def _targeted(config: GuideConfig | EnhanceConfig):
    """Checks (before any model loads), the output folder, the generator and the objective."""
    from neuromem.generation.objective import RoiObjective, parse_target

    config.check()
    check_writable(config.out)
    weights = parse_target(config.target)
    gen = _Generator(config)
    return gen, weights, RoiObjective(gen.reducer, weights)


def run_guide(config: GuideConfig) -> dict[str, Any]:
    """Run ``neuromem guide``; returns the ``responses.json`` record (also written)."""
    import torch

    from neuromem.generation.outputs import roi_means, roi_rows, save_png

    gen, weights, objective = _targeted(config)
    encoder = gen.encoder(config.encoder)
    seeds = list(range(config.seed, config.seed + config.n))
    prompts = [config.prompt] * config.n
    size = {"height": config.size, "width": config.size}

    timings = {}
    start = time.perf_counter()
    unguided, _ = gen.sample(prompts, seeds, **size)
    timings["unguided_s"] = time.perf_counter() - start
    start = time.perf_counter()
    guided, result = gen.sample(prompts, seeds, guidance=gen.guidance(encoder, objective), **size)
    timings["guided_s"] = time.perf_counter() - start

    roi_unguided_br, roi_guided_br = gen.measure(encoder, unguided), gen.measure(encoder, guided)
    target_unguided_b = objective.from_rois(torch.from_numpy(roi_unguided_br)).numpy()
    target_guided_b = objective.from_rois(torch.from_numpy(roi_guided_br)).numpy()
    out = Path(config.out)
    for i, seed in enumerate(seeds):
        save_png(unguided[i], out / "unguided" / f"seed_{seed}.png")
        save_png(guided[i], out / "guided" / f"seed_{seed}.png")
    columns = gen.reducer.column_names
    record = {
        **_header("guide", config, target=weights, encoder=encoder.metadata(), seeds=seeds,
                  device=gen.device),
        "columns": columns,
        "images": [
            {"seed": seed,
             "unguided_png": f"unguided/seed_{seed}.png", "guided_png": f"guided/seed_{seed}.png",
             "unguided": unguided_row, "guided": guided_row,
             "target_objective": {"unguided": float(t_u), "guided": float(t_g)}}
            for seed, unguided_row, guided_row, t_u, t_g in zip(
                seeds, roi_rows(columns, roi_unguided_br), roi_rows(columns, roi_guided_br),
                target_unguided_b, target_guided_b, strict=True)
        ],
        "mean": {
            "unguided": roi_means(columns, roi_unguided_br),
            "guided": roi_means(columns, roi_guided_br),
            "gain": roi_means(columns, roi_guided_br - roi_unguided_br),
            "target_objective_gain": float((target_guided_b - target_unguided_b).mean()),
        },
        "timings": timings,
        "guidance_trace": [vars(step) for step in result.records],
    }
    write_json(out / "responses.json", record)
    return record


def load_image(path: str | Path, size: int):
    """Read an image, resize its shorter side to ``size`` and crop the centre.

    Returns
    -------
    torch.Tensor
        ``(1, 3, size, size)`` in ``[0, 1]``.
    """
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from None
    scale = size / min(img.size)
    width, height = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels_hw3 = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(pixels_hw3).permute(2, 0, 1)[None].contiguous()


def run_enhance(config: EnhanceConfig) -> dict[str, Any]:
    """Run ``neuromem enhance``; returns the ``responses.json`` record (also written)."""
    import torch

    from neuromem.generation.outputs import quantise, roi_rows, save_png

    gen, weights, objective = _targeted(config)
    size = config.size or gen.pipe.unet.config.sample_size * gen.pipe.vae_scale_factor
    before = quantise(load_image(config.image, size))
    encoder = gen.encoder(config.encoder)
    img2img = {"init_images_b3hw": before, "strength": config.strength}
    reconstruction, _ = gen.sample([config.prompt], [config.seed], **img2img)
    after, result = gen.sample([config.prompt], [config.seed],
                               guidance=gen.guidance(encoder, objective), **img2img)

    columns = gen.reducer.column_names
    out = Path(config.out)
    responses, target_objective = {}, {}
    for name, images in (("before", before), ("reconstruction", reconstruction),
                         ("after", after)):
        save_png(images[0], out / f"{name}.png")
        roi_br = gen.measure(encoder, images)
        responses[name] = roi_rows(columns, roi_br)[0]
        target_objective[name] = float(objective.from_rois(torch.from_numpy(roi_br))[0])

    def change(frm: str) -> dict[str, float]:
        return {column: responses["after"][column] - responses[frm][column] for column in columns}

    record = {
        **_header("enhance", config, target=weights, encoder=encoder.metadata(), size=size,
                  device=gen.device),
        "columns": columns,
        "responses": responses,
        "target_objective": target_objective,
        "change": change("reconstruction"),
        "change_from_original": change("before"),
        "change_definition": "change: after - reconstruction (the unguided img2img twin, same "
                             "seed); change_from_original: after - before",
        "guidance_trace": [vars(step) for step in result.records],
    }
    write_json(out / "responses.json", record)
    return record


def cross_eval_targets(roi_set, targets: str | None) -> list[str]:
    """The target ROI columns: those given (with or without ``roi_``), else every bilateral ROI."""
    from neuromem.cortex.rois import HEMI_PREFIXES, roi_column

    if targets:
        chosen = [roi_column(t.strip()) for t in targets.split(",") if t.strip()]
    else:
        chosen = [f"roi_{name}" for name in roi_set.names
                  if not name.startswith(tuple(HEMI_PREFIXES.values()))]
    if len(chosen) < 2:
        raise InputError(f"cross-evaluation needs at least 2 target ROIs, got {chosen}")
    return chosen


def run_cross_eval(config: CrossEvalConfig) -> dict[str, Any]:
    """Run ``neuromem cross-eval``; returns the ``cross_eval.json`` record (also written)."""
    from neuromem.generation.crosseval import (
        NORMALISATION,
        diagonal_ranks,
        plot_heatmap,
        summarise,
    )
    from neuromem.generation.objective import RoiObjective
    from neuromem.generation.outputs import save_png

    config.check()
    if config.guide_encoder == config.eval_encoder:
        log.warning("guide and eval encoder are the same (%s): this is not a cross-evaluation",
                    config.guide_encoder)
    check_writable(config.out)
    gen = _Generator(config)
    targets = cross_eval_targets(gen.reducer.roi_set, config.targets)
    objectives = {t: RoiObjective(gen.reducer, {t: 1.0}) for t in targets}  # checks the names
    columns_t = [gen.reducer.column_names.index(t) for t in targets]
    encoders = {"guide": gen.encoder(config.guide_encoder),
                "eval": gen.encoder(config.eval_encoder)}
    seeds = list(range(config.seed, config.seed + config.n))
    prompts = [config.prompt] * config.n
    size = {"height": config.size, "width": config.size}

    def measure(images_b3hw) -> dict[str, np.ndarray]:
        return {role: gen.measure(enc, images_b3hw)[:, columns_t].mean(axis=0)
                for role, enc in encoders.items()}

    baseline = measure(gen.sample(prompts, seeds, **size)[0])
    raw = {role: np.zeros((len(targets), len(targets))) for role in encoders}
    out = Path(config.out)
    for i, target in enumerate(track(targets, desc="targets", unit="target")):
        guidance = gen.guidance(encoders["guide"], objectives[target])
        images, _ = gen.sample(prompts, seeds, guidance=guidance, **size)
        for seed, image in zip(seeds, images, strict=True):
            save_png(image, out / "images" / target / f"seed_{seed}.png")
        for role, response_t in measure(images).items():
            raw[role][i] = response_t

    results = {role: summarise(raw[role], baseline[role], targets) for role in encoders}
    record = {
        **_header("cross-eval", config, targets=targets, seeds=seeds, device=gen.device,
                  guide_encoder=encoders["guide"].metadata(),
                  eval_encoder=encoders["eval"].metadata()),
        "normalisation": NORMALISATION,
        "rows": "target ROI", "columns": "measured ROI", "targets": targets,
        "eval_encoder": results["eval"],
        "guide_encoder": results["guide"],
    }
    write_json(out / "cross_eval.json", record)
    z_tt = np.asarray(results["eval"]["z"])
    row_rank_t, _ = diagonal_ranks(z_tt)
    plot_heatmap(z_tt, row_rank_t, targets,
                 f"guided by {config.guide_encoder}, measured by {config.eval_encoder}",
                 out / "cross_eval.png")
    return record
