"""Search brain-guidance settings with Ray Tune (ASHA), each trial pinned to a GPU type.

The search space (``search_space`` in the YAML, e.g. ``tune_configs/guidance.yaml``) covers the
guidance scale, the encoder truncation layer, the gradient blur σ, the number of steps, the
guided-step range (as fractions of the steps) and, on heterogeneous clusters, the
``accelerator_type`` a trial runs on.

A trial walks through the prompts; at iteration ``k`` it samples prompt ``k`` with
``images_per_prompt`` seeds, unguided and guided (same seeds), and reports running means over
all images so far of

- ``gain``: the target objective (weighted ROI sum) measured by ``eval_encoder``, which must
  differ from the ``guide_encoder`` that steers, guided minus unguided;
- ``artifact``: ``max(0, hf(guided) / hf(unguided) − 1)``, with ``hf`` the fraction of the
  image's spectral energy above ``artifact_cutoff`` cycles per pixel;
- ``fidelity_loss``: ``max(0, s(unguided) − s(guided))``, with ``s`` the open_clip cosine
  similarity between the image and its prompt;
- ``score = gain − penalties.artifact · artifact − penalties.fidelity · fidelity_loss``, the
  metric ASHA maximises (``training_iteration`` = prompts done).

Resources: each trial asks for ``resources`` (e.g. ``{CPU: 4, GPU: 1}``) plus
``accelerator_type:<T>: 0.001`` when its config has an ``accelerator_type`` ``T`` (Ray's custom
resource that GPU nodes advertise), so it lands on a node of that type; it records the node it
ran on. Outputs: ``trials.parquet`` (one row per trial: config, last metrics, node),
``best_config.yaml`` (settings for ``neuromem guide``) and Ray's own ``ray_results/`` folder.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.errors import InputError

log = logging.getLogger(__name__)

SEARCH_KINDS = ("uniform", "loguniform", "choice", "grid_search", "randint")
REQUIRED_KEYS = ("model", "prompts", "target", "guide_encoder", "eval_encoder", "search_space")
DEFAULTS: dict[str, Any] = {
    "rois": "default",
    "fidelity": {"model": "ViT-B-32", "pretrained": "openai"},
    "images_per_prompt": 2,
    "seed": 0,
    "cfg_scale": 7.5,
    "size": None,
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
GUIDANCE_KEYS = ("scale", "trunc_layer", "blur_sigma", "steps", "first_step_frac",
                 "last_step_frac")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path,
                        help="search YAML (see tune_configs/guidance.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


def load_settings(path: Path) -> dict[str, Any]:
    """Read and check a search YAML, filling defaults."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read tune config {str(path)!r}: {exc}") from exc
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
    settings = {**DEFAULTS, **raw}
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
    extra = set(space) - set(GUIDANCE_KEYS) - {"accelerator_type"}
    if extra:
        raise InputError(f"unknown search_space parameters {sorted(extra)}; expected "
                         f"{list(GUIDANCE_KEYS) + ['accelerator_type']}")
    if "scale" not in space or "steps" not in space:
        raise InputError("search_space needs at least 'scale' and 'steps'")
    for name, spec in space.items():
        _parse_dimension(name, spec)  # raises on malformed entries
    return settings


def _parse_dimension(name: str, spec: Any):
    """YAML ``{kind: args}`` → a Tune search object; a plain value stays fixed."""
    from ray import tune

    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
        raise InputError(f"search_space.{name} must be a value or one of "
                         f"{{{'|'.join(SEARCH_KINDS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise InputError(f"search_space.{name}.{kind} needs a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2:
            raise InputError(f"search_space.{name}.{kind} needs [low, high], got {args!r}")
        return getattr(tune, kind)(*args)
    return getattr(tune, kind)(args)


def param_space(settings: dict[str, Any]) -> dict[str, Any]:
    """Tune's ``param_space`` from the YAML ``search_space``."""
    return {name: _parse_dimension(name, spec)
            for name, spec in settings["search_space"].items()}


def guided_step_range(steps: int, first_frac: float, last_frac: float) -> tuple[int, int]:
    """First and last guided step (inclusive, 0-based) of ``steps`` from fractions in [0, 1]."""
    if not 0 <= first_frac <= last_frac <= 1:
        raise InputError(
            f"need 0 <= first_step_frac <= last_step_frac <= 1, got {first_frac}, {last_frac}"
        )
    first = min(steps - 1, math.floor(first_frac * steps))
    last = max(first, math.ceil(last_frac * steps) - 1)
    return first, last


def trial_resources(config: dict[str, Any], resources: dict[str, float]):
    """Placement group of one trial: ``resources`` plus its accelerator type, if any."""
    from ray.tune import PlacementGroupFactory

    bundle = {key: float(value) for key, value in resources.items()}
    if config.get("accelerator_type"):
        bundle[f"accelerator_type:{config['accelerator_type']}"] = 0.001
    return PlacementGroupFactory([bundle])


def trial_score(gain: float, artifact: float, fidelity_loss: float,
                penalties: dict[str, float]) -> float:
    """``gain − w_artifact · artifact − w_fidelity · fidelity_loss``."""
    return gain - penalties["artifact"] * artifact - penalties["fidelity"] * fidelity_loss


def node_placement() -> dict[str, str]:
    """Id and accelerator types of the node this Ray worker runs on."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    types = sorted(key.split(":", 1)[1] for key in resources
                   if key.startswith("accelerator_type:"))
    return {"node_id": node_id, "node_accelerator_types": ",".join(types)}


def guidance_trial(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """One Tune trial: guided vs unguided images per prompt, reporting running means."""
    import torch
    from ray import tune

    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.generation.blur import high_frequency_ratio
    from neuromem.generation.guidance import BrainGuidance, GuidanceConfig, generate
    from neuromem.generation.objective import (
        ClipTextSimilarity,
        RoiObjective,
        parse_target,
        score_rois,
    )
    from neuromem.generation.pipeline import load_pipeline
    from pipelines.guide import DTYPES, quantise

    placement = node_placement()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = int(config["steps"])
    first, last = guided_step_range(steps, config.get("first_step_frac", 0.0),
                                    config.get("last_step_frac", 1.0))
    trunc = config.get("trunc_layer")
    guidance_config = GuidanceConfig(
        scale=float(config["scale"]), trunc_layer=None if trunc is None else int(trunc),
        blur_sigma=float(config.get("blur_sigma", 0.0)), first_step=first, last_step=last)
    reducer = RoiReducer(load_roi_set(settings["rois"]))
    objective = RoiObjective(reducer, parse_target(settings["target"]))
    pipe = load_pipeline(settings["model"], device=device, dtype=DTYPES[settings["dtype"]],
                         scheduler=settings["scheduler"])
    guide_encoder = load_encoder(settings["guide_encoder"], device=device)
    eval_encoder = load_encoder(settings["eval_encoder"], device=device)
    fidelity = ClipTextSimilarity(settings["fidelity"]["model"],
                                  settings["fidelity"].get("pretrained", ""), device=device)
    guidance = BrainGuidance(pipe, guide_encoder, objective, guidance_config)

    per_image: dict[str, list[float]] = {"gain": [], "artifact": [], "fidelity_loss": []}
    n_per_prompt = int(settings["images_per_prompt"])
    for k, prompt in enumerate(settings["prompts"]):
        seeds = [settings["seed"] + k * n_per_prompt + j for j in range(n_per_prompt)]
        prompts = [prompt] * n_per_prompt
        common = dict(steps=steps, cfg_scale=settings["cfg_scale"],
                      height=settings["size"], width=settings["size"])
        unguided = quantise(generate(pipe, prompts, seeds, **common).images_b3hw)
        guided = quantise(generate(pipe, prompts, seeds, guidance=guidance, **common).images_b3hw)
        objective_u = objective.from_rois(torch.from_numpy(score_rois(eval_encoder, reducer,
                                                                      unguided)))
        objective_g = objective.from_rois(torch.from_numpy(score_rois(eval_encoder, reducer,
                                                                      guided)))
        cutoff = settings["artifact_cutoff"]
        hf_u = high_frequency_ratio(unguided, cutoff).numpy()
        hf_g = high_frequency_ratio(guided, cutoff).numpy()
        per_image["gain"] += (objective_g - objective_u).tolist()
        per_image["artifact"] += np.maximum(0.0, hf_g / np.maximum(hf_u, 1e-12) - 1).tolist()
        per_image["fidelity_loss"] += np.maximum(
            0.0, fidelity(unguided, prompts) - fidelity(guided, prompts)).tolist()
        means = {name: float(np.mean(values)) for name, values in per_image.items()}
        tune.report({
            **means,
            "score": trial_score(means["gain"], means["artifact"], means["fidelity_loss"],
                                 settings["penalties"]),
            "images": len(per_image["gain"]),
            "first_step": first, "last_step": last,
            "device": device, **placement,
        })


def run_search(settings: dict[str, Any], out: Path):
    """Run the Tune search on the connected Ray cluster; returns Tune's ``ResultGrid``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    resources = dict(settings["resources"])
    trainable = tune.with_resources(
        tune.with_parameters(guidance_trial, settings=settings),
        lambda config: trial_resources(config, resources),
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=len(settings["prompts"]),
        grace_period=int(settings["asha"]["grace_period"]),
        reduction_factor=float(settings["asha"]["reduction_factor"]),
    )
    storage = settings["storage_path"] or str((out / "ray_results").resolve())
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(settings),
        tune_config=tune.TuneConfig(
            metric="score", mode="max", scheduler=scheduler,
            num_samples=int(settings["num_samples"]),
            max_concurrent_trials=settings["max_concurrent_trials"],
        ),
        run_config=tune.RunConfig(name="tune_guidance", storage_path=storage, verbose=0),
    )
    return tuner.fit()


def write_outputs(results, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """``trials.parquet`` and ``best_config.yaml``; returns the best trial's summary."""
    import yaml

    from pipelines.guide import versions

    errors = [str(r.error) for r in results if r.error is not None]
    if errors:
        log.warning("%d trial(s) failed: %s", len(errors), errors[0])
    frame = results.get_dataframe()
    if frame.empty:
        raise InputError(f"no trial reported a result; first error: {errors[:1]}")
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("config/__")],
                       errors="ignore")
    for column in frame.columns:  # mixed None/number/str config columns as strings
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "trials.parquet", index=False)

    best = results.get_best_result(metric="score", mode="max", scope="last")
    config = dict(best.config)
    first, last = best.metrics["first_step"], best.metrics["last_step"]
    summary = {
        "guide": {
            "model": settings["model"], "target": settings["target"],
            "encoder": settings["guide_encoder"], "scale": float(config["scale"]),
            "trunc_layer": config.get("trunc_layer"),
            "blur_sigma": float(config.get("blur_sigma", 0.0)),
            "steps": int(config["steps"]), "first_step": int(first), "last_step": int(last),
            "cfg_scale": settings["cfg_scale"], "scheduler": settings["scheduler"],
        },
        "config": config,
        "metrics": {key: best.metrics[key] for key in
                    ("score", "gain", "artifact", "fidelity_loss", "images",
                     "training_iteration", "node_id", "node_accelerator_types")},
        "eval_encoder": settings["eval_encoder"],
        "versions": versions() | {"ray": _ray_version()},
        "command_line": sys.argv,
    }
    (out / "best_config.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return summary


def _ray_version() -> str:
    import ray

    return ray.__version__


def run(args: argparse.Namespace) -> int:
    import ray

    settings = load_settings(args.config)
    if not ray.is_initialized():
        ray.init(address=args.address)
    results = run_search(settings, args.out)
    summary = write_outputs(results, settings, args.out)
    log.info("best score %.4g (%s); wrote %s", summary["metrics"]["score"],
             summary["guide"], args.out)
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
