"""The LoRA evaluation's paired summary, image grid and report files (no models)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from neuromem.generation.evaluation import (
    DEFAULT_CLIP,
    TINY_CLIP,
    clip_for,
    grid_png,
    seeds_for,
    summarise,
    write_report,
)


def test_summarise_is_the_paired_t_test():
    rng = np.random.default_rng(0)
    base = {"reward": rng.normal(size=12), "flat": np.ones(12)}
    lora = {"reward": base["reward"] + rng.normal(0.5, 1.0, 12), "flat": np.ones(12)}
    summary = summarise(base, lora)
    diff = lora["reward"] - base["reward"]
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(12))  # the paired t from its formula
    row = summary["reward"]
    assert row["paired_t"] == pytest.approx(t, rel=1e-12)
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df=11), rel=1e-9)
    assert row["mean_difference"] == pytest.approx(diff.mean())
    assert row["fraction_improved"] == pytest.approx((diff > 0).mean())
    assert summary["flat"]["paired_t"] is None and summary["flat"]["p_value"] is None


def test_grid_rows_are_base_then_lora():
    base = torch.zeros(2, 3, 4, 4)
    lora = torch.ones(2, 3, 4, 4)
    base[1] = 0.5
    grid = np.asarray(Image.open(io.BytesIO(grid_png(base, lora))))
    assert grid.shape == (8, 8, 3)
    assert (grid[:4, :4] == 0).all() and (grid[4:, :4] == 128).all() and (grid[:, 4:] == 255).all()


def test_report_files_go_to_a_uri(tmp_path):
    evaluation = {
        "model": "tiny", "lora": "runs/x", "encoder": "clip-probe:tiny", "rois": "default",
        "reward": {"weights": {"FFA": 1.0}, "source": "seed000", "correlation": None,
                   "mean": {"FFA": 0.0}, "std": {"FFA": 1.0}},
        "prompts": ["a"], "seeds": [0, 1], "settings": {"size": 4}, "clip": TINY_CLIP,
        "assessor": "none",
        "summary": summarise({"reward": np.array([0.0, 1.0])}, {"reward": np.array([1.0, 3.0])}),
        "images": [{"prompt": "a", "seed": s, "png": f"p000_seed{s}.png", "base_reward": float(s)}
                   for s in (0, 1)],
    }
    images = torch.rand(2, 3, 4, 4)
    write_report(evaluation, images, images, f"file://{tmp_path}/eval")
    out = tmp_path / "eval"
    assert json.loads((out / "evaluation.json").read_text())["clip"] == TINY_CLIP
    assert list(pd.read_csv(out / "per_image.csv")["seed"]) == [0, 1]
    report = (out / "report.md").read_text()
    assert "| reward | 0.5 | 2 | 1.5 |" in report and "grid.png" in report
    assert Image.open(out / "grid.png").size == (8, 8)
    assert Image.open(out / "lora" / "p000_seed1.png").size == (4, 4)  # every twin, by URI too


def test_clip_and_seeds_follow_the_model():
    assert seeds_for("tiny") == [0] and seeds_for("/models/sd15") == [0, 1, 2, 3]
    assert seeds_for("tiny", (5, 6)) == [5, 6]
    assert clip_for("tiny") == TINY_CLIP
    assert clip_for("runwayml/stable-diffusion-v1-5") == DEFAULT_CLIP
    assert clip_for("tiny", "open_clip:ViT-B-32@openai") == "open_clip:ViT-B-32@openai"
