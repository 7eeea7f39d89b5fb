"""Searching brain-guidance settings: the search YAML, guided-step ranges and trial metrics.

A search configuration (``tune_configs/guidance.yaml``) names the model, prompts, target, the
guiding and the measuring encoder and a ``search_space`` over the guidance scale, truncation
layer (``trunc_layer``: stop the gradient path) or straight-through surrogate layer
(``surrogate_layer``, CLIP probes), blur σ, gradient path (``grad_path``: ``x0`` or ``unet``),
``normalize_grad``, denoising steps (``inference_steps``, as ``--inference-steps``), guided-step
range (as fractions of the steps) and, on heterogeneous clusters, the ``accelerator_type`` a
trial runs on. Defaults follow the model: ``model: tiny`` is a tiny run (4 denoising steps, the
tiny open_clip model for fidelity, the model's 64-pixel size) unless the YAML says otherwise. A trial's metrics, as running
means over its images:

- ``gain``: the target objective measured by ``eval_encoder`` (which must differ from the
  ``guide_encoder`` that steers), guided minus unguided;
- ``artifact``: ``max(0, hf(guided) / hf(unguided) − 1)``, ``hf`` the fraction of the image's
  spectral energy above ``artifact_cutoff`` cycles per pixel;
- ``fidelity_loss``: ``max(0, s(unguided) − s(guided))``, ``s`` the open_clip cosine similarity
  between the image and its prompt;
- ``score = gain − penalties.artifact · artifact − penalties.fidelity · fidelity_loss``.

The Ray Tune side (search objects, trials, resources) is :mod:`neuromem.jobs.tune_guidance`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neuromem.errors import InputError
from neuromem.runtime.storage import display, read_text

SEARCH_KINDS = ("uniform", "loguniform", "choice", "grid_search", "randint")
REQUIRED_KEYS = ("model", "prompts", "target", "guide_encoder", "eval_encoder", "search_space")
DEFAULTS: dict[str, Any] = {
    "rois": "default",
    "fidelity": {"model": "ViT-B-32", "pretrained": "openai"},
    "images_per_prompt": 2,
    "seed": 0,
    "cfg_scale": 7.5,
    "size": None,  # the model's native size
    "scheduler": "ddim",
    "dtype": "float32",
    "penalties": {"artifact": 1.0, "fidelity": 1.0},
    "artifact_cutoff": 0.25,
    "num_samples": 1,
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"CPU": 1},
    "max_concurrent_trials": None,
    "storage_path": None,
}
GUIDANCE_KEYS = ("scale", "trunc_layer", "surrogate_layer", "blur_sigma", "grad_path",
                 "normalize_grad", "inference_steps", "first_step_frac", "last_step_frac")
#: Earlier names of search_space parameters, refused with the current name.
RETIRED_KEYS = {"steps": "inference_steps"}




def load_settings(location: str) -> dict[str, Any]:
    """Read (local path or URI) and check a search YAML, filling defaults."""
    import yaml

    try:
        raw = yaml.safe_load(read_text(location))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read tune config {display(location)}: "
                         f"{str(exc).splitlines()[0]}") from None
    return check_settings(raw)


def check_settings(raw: Any) -> dict[str, Any]:
    """Validate a search configuration (a dict as in the YAML) and fill defaults."""
    if not isinstance(raw, dict):
        raise InputError("tune config must be a mapping (see tune_configs/guidance.yaml)")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise InputError(f"tune config lacks {missing}; see tune_configs/guidance.yaml")
    unknown = set(raw) - set(REQUIRED_KEYS) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown tune config keys {sorted(unknown)}")
    settings = {**DEFAULTS, **model_defaults(raw["model"]), **raw}
    if settings["guide_encoder"] == settings["eval_encoder"]:
        raise InputError(
            "eval_encoder must differ from guide_encoder: the gain has to be measured by an "
            f"encoder that did not steer the sampling (both are {settings['guide_encoder']!r})"
        )
    if not settings["prompts"] or isinstance(settings["prompts"], str):
        raise InputError("prompts must be a non-empty list of strings")
    space = settings["search_space"]
    if not isinstance(space, dict):
        raise InputError("search_space must map parameter names to values or {kind: args}")
    for old, current in RETIRED_KEYS.items():
        if old in space:
            raise InputError(f"search_space.{old} is now search_space.{current} (denoising "
                             "steps, as --inference-steps)")
    extra = set(space) - set(GUIDANCE_KEYS) - {"accelerator_type"}
    if extra:
        raise InputError(f"unknown search_space parameters {sorted(extra)}; expected "
                         f"{list(GUIDANCE_KEYS) + ['accelerator_type']}")
    if "scale" not in space:
        raise InputError("search_space needs at least 'scale'")
    for name, spec in space.items():
        search_dimension(name, spec)  # raises on malformed entries
    from neuromem.generation.pipeline import inference_steps_for  # torch: after the checks

    settings["search_space"] = {"inference_steps": inference_steps_for(settings["model"]),
                                **space}
    return settings


def model_defaults(model: str) -> dict[str, Any]:
    """Defaults that follow the model: ``tiny`` measures fidelity with the tiny open_clip model
    (offline; the denoising steps follow it in :func:`check_settings`)."""
    return {"fidelity": {"model": "tiny"}} if model == "tiny" else {}


def search_dimension(name: str, spec: Any) -> tuple[str, list] | Any:
    """A YAML ``search_space`` entry: ``(kind, args)`` for ``{kind: args}``, else the fixed value.

    Raises
    ------
    InputError
        For an unknown kind or malformed arguments.
    """
    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
        raise InputError(f"search_space.{name} must be a value or one of "
                         f"{{{'|'.join(SEARCH_KINDS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise InputError(f"search_space.{name}.{kind} needs a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint") and len(args) != 2:
        raise InputError(f"search_space.{name}.{kind} needs [low, high], got {args!r}")
    return kind, args


def guided_step_range(steps: int, first_frac: float, last_frac: float) -> tuple[int, int]:
    """First and last guided step (inclusive, 0-based) of ``steps`` from fractions in [0, 1]."""
    if not 0 <= first_frac <= last_frac <= 1:
        raise InputError(
            f"need 0 <= first_step_frac <= last_step_frac <= 1, got {first_frac}, {last_frac}"
        )
    first = min(steps - 1, math.floor(first_frac * steps))
    last = max(first, math.ceil(last_frac * steps) - 1)
    return first, last


def trial_score(gain: float, artifact: float, fidelity_loss: float,
                penalties: dict[str, float]) -> float:
    """``gain − w_artifact · artifact − w_fidelity · fidelity_loss``."""
    return gain - penalties["artifact"] * artifact - penalties["fidelity"] * fidelity_loss


def image_metrics(objective_unguided_b: np.ndarray, objective_guided_b: np.ndarray,
                  hf_unguided_b: np.ndarray, hf_guided_b: np.ndarray,
                  fidelity_unguided_b: np.ndarray, fidelity_guided_b: np.ndarray
                  ) -> dict[str, list[float]]:
    """Per-image ``gain``, ``artifact`` and ``fidelity_loss`` of ``B`` guided/unguided twins."""
    return {
        "gain": (objective_guided_b - objective_unguided_b).tolist(),
        "artifact": np.maximum(0.0, hf_guided_b / np.maximum(hf_unguided_b, 1e-12) - 1).tolist(),
        "fidelity_loss": np.maximum(0.0, fidelity_unguided_b - fidelity_guided_b).tolist(),
    }
