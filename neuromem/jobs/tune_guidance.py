"""``neuromem tune-guidance``: a Ray Tune (ASHA) search of brain-guidance settings.

Each trial walks through the prompts of the search YAML (checked by
:func:`neuromem.generation.tuning.check_settings`); at iteration ``k`` it samples prompt ``k``
with ``images_per_prompt`` seeds, unguided and guided (same seeds), and reports running means of
the metrics of :mod:`neuromem.generation.tuning`; ASHA maximises ``score``
(``training_iteration`` = prompts done).

Resources: each trial asks for ``resources`` (e.g. ``{CPU: 4, GPU: 1}``) plus
``accelerator_type:<T>: 0.001`` when its config has an ``accelerator_type`` ``T`` (Ray's custom
resource that GPU nodes advertise), so it lands on a node of that type; it records the node it
ran on. Outputs: ``trials.parquet`` (one row per trial: config, last metrics, node),
``best_config.yaml`` (settings for ``neuromem guide``) and Ray's own ``ray_results/`` folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.errors import InputError
from neuromem.generation.tuning import load_settings, search_dimension
from neuromem.jobs.session import ray_session
from neuromem.runtime.config import JobConfig
from neuromem.runtime.progress import progress_bar
from neuromem.runtime.provenance import command_line, versions
from neuromem.runtime.storage import check_writable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneGuidanceConfig(JobConfig):
    """``neuromem tune-guidance``: the search YAML, the output folder, the cluster.

    Attributes
    ----------
    config : str
        Search YAML (local path or URI; see ``tune_configs/guidance.yaml``).
    out : str
        Output folder (local).
    address : str or None
        Ray cluster address; None: ``RAY_ADDRESS`` or an embedded local Ray.
    no_progress : bool
        No progress bar.
    """

    config: str
    out: str
    address: str | None = None
    no_progress: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for an output folder the search cannot write."""
        self.require_local("out")


def run_tune_guidance(config: TuneGuidanceConfig) -> dict[str, Any]:
    """Check the settings, run the search, write the outputs; returns the best trial's summary."""
    settings = load_settings(config.config)  # before Ray starts
    check_writable(config.out)
    out = Path(config.out)
    with ray_session(config.address):
        results = run_search(settings, out, progress=not config.no_progress)
        return write_outputs(results, settings, out)


def param_space(settings: dict[str, Any]) -> dict[str, Any]:
    """Tune's ``param_space`` from the YAML ``search_space``."""
    from ray import tune

    space = {}
    for name, spec in settings["search_space"].items():
        dimension = search_dimension(name, spec)
        if isinstance(spec, dict):
            kind, args = dimension
            dimension = getattr(tune, kind)(*args) if kind in ("uniform", "loguniform",
                                                               "randint") else getattr(tune, kind)(args)
        space[name] = dimension
    return space


def trial_progress(settings: dict[str, Any], *, enabled: bool = True):
    """A Tune callback showing a progress bar over trial iterations (prompts done) with the best
    score so far."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self):
            self.bar = None
            self.best = -np.inf

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if self.bar is None:
                self.bar = progress_bar(None, desc="tune-guidance (prompts over trials)",
                                        unit="prompt", enabled=enabled)
            # every trial created so far runs all prompts unless ASHA stops it: an upper bound
            self.bar.total = len(settings["prompts"]) * len(trials)
            self.best = max(self.best, float(result.get("score", -np.inf)))
            self.bar.set_postfix(best_score=f"{self.best:.4g}")
            self.bar.update(1)

        def on_experiment_end(self, trials, **info) -> None:
            if self.bar is not None:
                self.bar.close()

    return TrialProgress()


def trial_resources(config: dict[str, Any], resources: dict[str, float]):
    """Placement group of one trial: ``resources`` plus its accelerator type, if any."""
    from ray.tune import PlacementGroupFactory

    bundle = {key: float(value) for key, value in resources.items()}
    if config.get("accelerator_type"):
        bundle[f"accelerator_type:{config['accelerator_type']}"] = 0.001
    return PlacementGroupFactory([bundle])


def node_placement() -> dict[str, str]:
    """Id and accelerator types of the node this Ray worker runs on."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    types = sorted(key.split(":", 1)[1] for key in resources
                   if key.startswith("accelerator_type:"))
    return {"node_id": node_id, "node_accelerator_types": ",".join(types)}


def trial_guidance(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's :class:`~neuromem.generation.guidance.GuidanceConfig` settings (no step
    range), typed, with the defaults of ``neuromem guide`` for what the search leaves out."""
    def layer(name: str) -> int | None:
        return None if config.get(name) is None else int(config[name])

    return {"scale": float(config["scale"]), "trunc_layer": layer("trunc_layer"),
            "surrogate_layer": layer("surrogate_layer"),
            "blur_sigma": float(config.get("blur_sigma", 0.0)),
            "grad_path": str(config.get("grad_path", "x0")),
            "normalize_grad": bool(config.get("normalize_grad", False))}


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
    from neuromem.generation.outputs import quantise
    from neuromem.generation.pipeline import load_pipeline
    from neuromem.generation.tuning import guided_step_range, image_metrics, trial_score
    from neuromem.runtime.device import resolve_dtype

    placement = node_placement()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = int(config["inference_steps"])
    first, last = guided_step_range(steps, config.get("first_step_frac", 0.0),
                                    config.get("last_step_frac", 1.0))
    guidance_config = GuidanceConfig(**trial_guidance(config), first_step=first, last_step=last)
    reducer = RoiReducer(load_roi_set(settings["rois"]))
    objective = RoiObjective(reducer, parse_target(settings["target"]))
    pipe = load_pipeline(settings["model"], device=device, dtype=resolve_dtype(settings["dtype"]),
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
        for name, values in image_metrics(
                objective_u.numpy(), objective_g.numpy(),
                high_frequency_ratio(unguided, cutoff).numpy(),
                high_frequency_ratio(guided, cutoff).numpy(),
                fidelity(unguided, prompts), fidelity(guided, prompts)).items():
            per_image[name] += values
        means = {name: float(np.mean(values)) for name, values in per_image.items()}
        tune.report({
            **means,
            "score": trial_score(means["gain"], means["artifact"], means["fidelity_loss"],
                                 settings["penalties"]),
            "images": len(per_image["gain"]),
            "first_step": first, "last_step": last,
            "device": device, **placement,
        })


def run_search(settings: dict[str, Any], out: Path, *, progress: bool = True):
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
        run_config=tune.RunConfig(name="tune_guidance", storage_path=storage, verbose=0,
                                  callbacks=[trial_progress(settings, enabled=progress)]),
    )
    return tuner.fit()


def write_outputs(results, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """``trials.parquet`` and ``best_config.yaml``; returns the best trial's summary."""
    import yaml

    from neuromem.generation.outputs import GENERATION_PACKAGES

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
            "encoder": settings["guide_encoder"], **trial_guidance(config),
            "inference_steps": int(config["inference_steps"]), "first_step": int(first),
            "last_step": int(last),
            "cfg_scale": settings["cfg_scale"], "scheduler": settings["scheduler"],
        },
        "config": config,
        "metrics": {key: best.metrics[key] for key in
                    ("score", "gain", "artifact", "fidelity_loss", "images",
                     "training_iteration", "node_id", "node_accelerator_types")},
        "eval_encoder": settings["eval_encoder"],
        "versions": versions((*GENERATION_PACKAGES, "ray")),
        "command_line": command_line(),
    }
    (out / "best_config.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return summary
