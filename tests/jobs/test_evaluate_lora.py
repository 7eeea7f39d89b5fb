"""`neuromem evaluate-lora` on the tiny pipeline with a saved LoRA."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from neuromem.cli import main
from neuromem.generation.draft import (
    DraftSettings,
    gaussian,
    prepare_pipeline,
    sample_seed,
    save_lora,
)
from neuromem.generation.evaluation import clip_fidelity
from neuromem.generation.pipeline import load_pipeline
from neuromem.generation.reward import RewardSpec, build_composite_reward
from neuromem.memorability import ResMemAssessor
from neuromem.networks import load_clip

PROMPTS = ["a portrait of a man", "a quiet forest"]
SEEDS = [0, 3]
REWARD = RewardSpec(weights={"FFA": 1.0, "PPA": -1.0}, mean={"FFA": 0.5}, std={"PPA": 2.0})


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads stall on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_lora(folder) -> None:
    torch.manual_seed(0)
    pipe = load_pipeline("tiny")
    prepare_pipeline(pipe, DraftSettings(num_inference_steps=2, height=32, width=32))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    save_lora(pipe.unet, folder)
    (folder / "run.json").write_text(json.dumps({
        "model": "tiny", "encoder": "clip-probe:tiny", "reward": REWARD.to_dict(), "step": 3,
        "settings": {"method": "draft1"},
    }))


def test_evaluate_lora_report(tmp_path, capsys, monkeypatch):
    # a finetune --out folder (Ray Train's layout), named by a relative path: its latest
    # checkpoint is evaluated
    run = tmp_path / "runs" / "ray" / "draft"
    make_lora(run / "checkpoint_000001")
    (run / "checkpoint_000001" / "run.json").write_text(json.dumps({"step": 2}))
    make_lora(run / "checkpoint_000002")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    monkeypatch.chdir(tmp_path)
    # --model tiny: denoising steps, size and CLIP model follow it (4 steps, 64 px, open_clip:tiny)
    code = main([
        "evaluate-lora", "--model", "tiny", "--lora", "runs", "--prompts", "prompts.txt",
        "--seeds", *map(str, SEEDS), "--cfg-scale", "3", "--device", "cpu", "--out", "eval",
    ])
    assert code == 0
    err = capsys.readouterr().err
    assert "generating base and LoRA: 100%" in err and "scoring (reward, resmem, CLIP): 100%" in err
    assert "8/8" in err and ("img/s" in err or "s/img" in err)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["lora"] == str(run / "checkpoint_000002")
    assert evaluation["training_run"]["step"] == 3
    assert evaluation["settings"]["num_inference_steps"] == 4 and evaluation["settings"]["size"] == 64
    assert evaluation["clip"] == "open_clip:tiny"
    assert evaluation["reward"] == REWARD.to_dict()  # taken from the checkpoint's run.json
    assert evaluation["encoder"] == "clip-probe:tiny"
    summary = evaluation["summary"]
    assert {"reward", "resmem", "clip_fidelity", "roi_FFA", "roi_RSC", "roi_lh_PPA"} <= set(summary)
    # the LoRA adapts the model it was trained on: another --model is refused before loading
    assert main(["evaluate-lora", "--model", "runwayml/stable-diffusion-v1-5", "--lora", "runs",
                 "--out", "eval-other"]) == 2
    assert "was trained on --model 'tiny'" in capsys.readouterr().err
    rows = pd.read_csv(out / "per_image.csv")
    assert list(zip(rows["prompt"], rows["seed"], strict=True)) == [
        (p, s) for p in PROMPTS for s in SEEDS
    ]

    # independent recomputation of the base images and their scores
    pipe = load_pipeline("tiny")
    latents = gaussian([sample_seed(s, p) for p in range(2) for s in SEEDS], (4, 32, 32),
                       "cpu", torch.float32)
    prompts = [p for p in PROMPTS for _ in SEEDS]
    with torch.no_grad():
        base = pipe(prompt=prompts, latents=latents.clone(), height=64, width=64,
                    num_inference_steps=4, guidance_scale=3.0, output_type="pt").images
        reward = build_composite_reward("clip-probe:tiny", REWARD)
        rois = reward.roi_responses(base)
    np.testing.assert_allclose(rows["base_reward"], reward.from_roi_responses(rois).numpy(),
                               rtol=1e-4, atol=1e-5)
    ffa = reward.column_names.index("roi_FFA")
    np.testing.assert_allclose(rows["base_roi_FFA"], rois[:, ffa].numpy(), rtol=1e-4)
    np.testing.assert_allclose(rows["base_resmem"], ResMemAssessor().score(base).numpy(),
                               rtol=1e-4)
    clip = load_clip("open_clip:tiny")
    np.testing.assert_allclose(rows["base_clip_fidelity"], clip_fidelity(clip, base, prompts),
                               rtol=1e-4)
    assert (rows["base_clip_fidelity"].abs() <= 1).all()
    # the LoRA changes the images, so its scores differ from the base's
    assert not np.allclose(rows["lora_reward"], rows["base_reward"])
    diff = rows["lora_reward"] - rows["base_reward"]
    assert np.isclose(summary["reward"]["mean_difference"], diff.mean(), rtol=1e-9)

    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (4 * 64, 128, 3)
    # every twin as its own file, the same name under base/ and lora/ (a game study's pairs)
    names = sorted(p.name for p in (out / "base").iterdir())
    assert len(names) == 4 and names == sorted(p.name for p in (out / "lora").iterdir())
    first = json.loads((out / "evaluation.json").read_text())["images"][0]["png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "base" / first)), grid[:64, :64])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "lora" / first)), grid[:64, 64:])
    expected_left = (base.permute(0, 2, 3, 1).reshape(-1, 64, 3) * 255).numpy()
    assert np.abs(grid[:, :64].astype(float) - expected_left).max() <= 1.0
    report = (out / "report.md").read_text()
    assert "| resmem |" in report and "'FFA': 1.0" in report and "grid.png" in report
