"""Ray Tune search over guidance settings, on a multi-node local cluster with fake GPU types.

The cluster test needs a Ray cluster of its own (nodes advertising different accelerator
types), which cannot coexist with the session's ``ray_local`` cluster in one process: it runs
the search in a child Python process that starts ``ray.cluster_utils.Cluster``, connects, runs
the pipeline and shuts everything down. The pytest process's Ray state is never touched.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from neuromem.errors import InputError
from neuromem.generation.tuning import check_settings, guided_step_range, trial_score
from neuromem.jobs.tune_guidance import trial_guidance, trial_resources

ACCELERATORS = ("A100", "H100")

SETTINGS = {
    "model": "tiny",
    "prompts": ["a photo of a house", "a photo of a street"],
    "images_per_prompt": 1,
    "target": "roi_PPA:+1,roi_RSC:-1",
    "guide_encoder": "clip-probe:tiny",
    "eval_encoder": "tribev2:tiny",
    "fidelity": {"model": "tiny"},
    "size": 32,
    "search_space": {
        "scale": {"uniform": [1000.0, 30000.0]},
        "surrogate_layer": {"choice": [None, 2]},
        "grad_path": {"choice": ["x0", "unet"]},
        "blur_sigma": {"uniform": [0.0, 1.0]},
        "inference_steps": 2,
        "first_step_frac": 0.0,
        "last_step_frac": 1.0,
        "accelerator_type": {"grid_search": list(ACCELERATORS)},
    },
    "num_samples": 1,
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "resources": {"CPU": 1, "GPU": 1},
}

DRIVER = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from neuromem.cli import run_module

cluster = Cluster()
try:
    cluster.add_node(num_cpus=0)  # head: no trial fits on it
    nodes = {t: cluster.add_node(num_cpus=1, num_gpus=1, resources={f"accelerator_type:{t}": 1})
             for t in ("A100", "H100")}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    code = run_module("pipelines.tune_guidance", ["--config", sys.argv[1], "--out", sys.argv[2]])
    json.dump({t: n.node_id for t, n in nodes.items()}, open(sys.argv[3], "w"))
finally:
    ray.shutdown()
    cluster.shutdown()
sys.exit(code)
"""


def test_trials_land_on_the_accelerator_type_their_config_names(tmp_path: Path):
    config_path = tmp_path / "guidance.yaml"
    config_path.write_text(yaml.safe_dump(SETTINGS))
    out = tmp_path / "out"
    node_file = tmp_path / "nodes.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(config_path), str(out), str(node_file)],
        env=env, capture_output=True, text=True, timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    node_of_type = json.loads(node_file.read_text())

    trials = pd.read_parquet(out / "trials.parquet")
    assert sorted(trials["config/accelerator_type"]) == list(ACCELERATORS)
    for _, trial in trials.iterrows():
        wanted = trial["config/accelerator_type"]
        assert trial["node_accelerator_types"] == wanted
        assert trial["node_id"] == node_of_type[wanted]
        assert 1 <= trial["training_iteration"] <= len(SETTINGS["prompts"])
        assert trial["images"] == trial["training_iteration"]
        assert math.isfinite(trial["score"])
        assert trial["score"] == pytest.approx(
            trial["gain"] - trial["artifact"] - trial["fidelity_loss"])
        assert 1000.0 <= trial["config/scale"] <= 30000.0

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["metrics"]["score"] == pytest.approx(trials["score"].max())
    assert best["guide"]["encoder"] == "clip-probe:tiny"
    assert best["eval_encoder"] == "tribev2:tiny"
    assert (best["guide"]["first_step"], best["guide"]["last_step"]) == (0, 1)
    assert best["guide"]["surrogate_layer"] in (None, 2) and best["guide"]["trunc_layer"] is None
    assert best["guide"]["grad_path"] in ("x0", "unet")


def test_settings_are_checked():
    check_settings(SETTINGS)
    with pytest.raises(InputError, match="must differ"):
        check_settings({**SETTINGS, "eval_encoder": SETTINGS["guide_encoder"]})
    with pytest.raises(InputError, match="lacks"):
        check_settings({k: v for k, v in SETTINGS.items() if k != "target"})
    bad_space = {**SETTINGS["search_space"], "scale": {"normal": [0, 1]}}
    with pytest.raises(InputError, match="search_space.scale"):
        check_settings({**SETTINGS, "search_space": bad_space})
    with pytest.raises(InputError, match="unknown search_space"):
        check_settings({**SETTINGS, "search_space": {**SETTINGS["search_space"], "lr": 1}})


def test_step_range_resources_and_score():
    assert guided_step_range(50, 0.0, 1.0) == (0, 49)
    assert guided_step_range(50, 0.1, 0.6) == (5, 29)
    assert guided_step_range(4, 0.99, 1.0) == (3, 3)
    with pytest.raises(InputError):
        guided_step_range(10, 0.8, 0.2)
    bundle = trial_resources({"accelerator_type": "A100"}, {"CPU": 4, "GPU": 1}).bundles
    assert bundle == [{"CPU": 4.0, "GPU": 1.0, "accelerator_type:A100": 0.001}]
    assert trial_resources({}, {"CPU": 2}).bundles == [{"CPU": 2.0}]
    assert trial_score(1.0, 0.5, 0.25, {"artifact": 2.0, "fidelity": 4.0}) == -1.0


def test_defaults_follow_the_model_and_steps_are_inference_steps():
    space = {k: v for k, v in SETTINGS["search_space"].items() if k != "inference_steps"}
    plain = {k: v for k, v in SETTINGS.items() if k not in ("fidelity", "size")}
    tiny = check_settings({**plain, "search_space": space})
    assert tiny["search_space"]["inference_steps"] == 4  # a tiny run, as `guide --model tiny`
    assert tiny["fidelity"] == {"model": "tiny"} and tiny["size"] is None  # offline, 64 px
    real = check_settings({**plain, "model": "/models/sd15", "search_space": space})
    assert real["search_space"]["inference_steps"] == 50
    assert real["fidelity"] == {"model": "ViT-B-32", "pretrained": "openai"}
    searched = check_settings({**SETTINGS, "search_space": {
        **space, "inference_steps": {"choice": [2, 3]}}})
    assert searched["search_space"]["inference_steps"] == {"choice": [2, 3]}
    with pytest.raises(InputError, match="search_space.steps is now search_space.inference_steps"):
        check_settings({**SETTINGS, "search_space": {**space, "steps": 2}})


def test_progress_bar_counts_prompts_over_the_trials_created(capsys):
    from neuromem.jobs.tune_guidance import trial_progress

    callback = trial_progress(SETTINGS)
    trials = ["trial-a", "trial-b"]
    for score in (0.5, 2.0, 1.0):
        callback.on_trial_result(0, trials, trials[0], {"score": score})
    assert (callback.bar.n, callback.bar.total) == (3, 2 * len(SETTINGS["prompts"]))
    callback.on_experiment_end(trials)
    err = capsys.readouterr().err
    assert "tune-guidance" in err and "best_score=2" in err and "3/4" in err


def test_trial_guidance_settings_are_typed_with_guide_defaults():
    assert trial_guidance({"scale": 10, "surrogate_layer": 2.0, "grad_path": "unet",
                           "normalize_grad": 1}) == {
        "scale": 10.0, "trunc_layer": None, "surrogate_layer": 2, "blur_sigma": 0.0,
        "grad_path": "unet", "normalize_grad": True}
    check_settings({**SETTINGS, "search_space": {**SETTINGS["search_space"],
                                                 "normalize_grad": {"choice": [False, True]}}})
