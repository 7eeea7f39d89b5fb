"""Ray Tune search over guidance settings: settings checks, trial resources, score, progress.

The search itself runs end to end on a multi-node cluster whose GPU nodes advertise different
accelerator types, through ``ray job submit``: ``tests/cluster/test_multinode_jobs.py``
(``test_tune_guidance_job_places_trials_on_their_gpu_type``).
"""

from __future__ import annotations

import pytest

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
