"""The guide, enhance and cross-eval commands on the tiny pipeline and tiny encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from neuromem.cli import main
from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.generation.objective import score_rois
from neuromem.generation.pipeline import load_pipeline

TARGET = "roi_PPA:+1,roi_RSC:-1"


def _read_png(path) -> torch.Tensor:
    pixels_hw3 = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels_hw3).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def scorer():
    encoder = load_encoder("clip-probe:tiny")
    reducer = RoiReducer(load_roi_set("default"))
    return lambda images_b3hw: score_rois(encoder, reducer, images_b3hw)


def test_guide_writes_twins_with_the_same_seeds_and_their_responses(tmp_path, scorer):
    out = tmp_path / "guide"
    code = main(["guide", "--model", "tiny", "--prompt", "a photo of a house", "--target",
                 TARGET, "--encoder", "clip-probe:tiny", "--scale", "1e4", "--n", "2",
                 "--seed", "5", "--inference-steps", "3", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "responses.json").read_text())
    columns = report["columns"]
    assert columns == RoiReducer(load_roi_set("default")).column_names
    assert [image["seed"] for image in report["images"]] == [5, 6]
    assert report["settings"]["guidance"]["scale"] == 1e4
    assert report["versions"]["diffusers"]

    # the unguided twins are exactly what diffusers makes with those seeds
    pipe = load_pipeline("tiny")
    expected = pipe(prompt=["a photo of a house"] * 2, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                    output_type="pt").images
    for i, image in enumerate(report["images"]):
        unguided = _read_png(out / image["unguided_png"])
        guided = _read_png(out / image["guided_png"])
        assert unguided.shape == (1, 3, 64, 64)
        assert torch.equal(unguided[0], (expected[i] * 255).round() / 255)
        # the JSON holds the responses to the saved files, for every ROI
        for key, pixels in (("unguided", unguided), ("guided", guided)):
            np.testing.assert_allclose([image[key][c] for c in columns], scorer(pixels)[0],
                                       rtol=1e-5, atol=1e-7)
        assert image["target_objective"]["guided"] > image["target_objective"]["unguided"]
        assert image["guided"]["roi_PPA"] > image["unguided"]["roi_PPA"]
    assert report["mean"]["target_objective_gain"] > 0


def test_enhance_moves_an_image_towards_the_target(tmp_path, scorer):
    rng = np.random.default_rng(0)
    source = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "enhance"
    code = main(["enhance", str(source), "--target", TARGET, "--model", "tiny", "--encoder",
                 "clip-probe:tiny", "--scale", "3e4", "--strength", "0.5", "--inference-steps", "4",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "responses.json").read_text())
    before = _read_png(out / "before.png")
    assert before.shape == (1, 3, 64, 64)  # centre crop of the 80x96 image at the model's size
    np.testing.assert_allclose(list(report["responses"]["before"].values()), scorer(before)[0],
                               rtol=1e-5, atol=1e-7)
    objective = report["target_objective"]
    assert objective["after"] > objective["reconstruction"]
    assert len(report["guidance_trace"]) == 2  # strength 0.5 of 4 steps
    # the change is measured against the unguided img2img twin, and against the original too
    after = report["responses"]["after"]
    for column in report["columns"]:
        assert report["change"][column] == pytest.approx(
            after[column] - report["responses"]["reconstruction"][column])
        assert report["change_from_original"][column] == pytest.approx(
            after[column] - report["responses"]["before"][column])


def test_cross_eval_matrix_ranks_and_heatmap(tmp_path):
    out = tmp_path / "cross"
    targets = ["roi_PPA", "roi_FFA", "roi_RSC"]
    code = main(["cross-eval", "--model", "tiny", "--prompt", "a photo", "--guide-encoder",
                 "clip-probe:tiny", "--eval-encoder", "tribev2:tiny", "--targets",
                 ",".join(targets), "--scale", "1e4", "--n", "1", "--inference-steps", "2",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "cross_eval.json").read_text())
    assert report["targets"] == targets
    for role in ("eval_encoder", "guide_encoder"):
        raw = np.asarray(report[role]["raw"])
        assert raw.shape == (3, 3)
        np.testing.assert_allclose(report[role]["z"], scipy.stats.zscore(raw, axis=0))
        ranks = report[role]["diagonal_rank_in_row"]
        assert set(ranks) == set(targets) and all(1 <= r <= 3 for r in ranks.values())
    # under the encoder that guided, each target's images drive that ROI most
    assert set(report["guide_encoder"]["diagonal_rank_in_column"].values()) == {1}
    assert report["settings"]["eval_encoder"]["spec"] == "tribev2:tiny"
    assert Image.open(out / "cross_eval.png").size[0] > 100
    assert len(list((out / "images").rglob("*.png"))) == 3


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "NOPE:+1"], "roi_NOPE"),
    (["--inference-steps", "-2"], "--inference-steps must be at least 1"),
    (["--n", "0"], "--n must be at least 1"),
    (["--blur-sigma", "-1"], "blur sigma"),
    (["--trunc-layer", "2", "--surrogate-layer", "2"], "not both"),
])
def test_bad_arguments_are_one_line_before_any_model_loads(tmp_path, capsys, extra, message):
    given = {"--model": "/nonexistent/model", "--prompt": "x", "--target": "PPA:+1",
             "--encoder": "clip-probe:tiny", "--scale": "1", "--out": str(tmp_path / "out")}
    given.update(zip(extra[::2], extra[1::2], strict=True))
    assert main(["guide", *[part for item in given.items() for part in item]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_gradient_settings_reach_the_guidance_config():
    from neuromem.cli import build_parser
    from neuromem.jobs.guide import GuideConfig

    argv = ["guide", "--model", "tiny", "--prompt", "x", "--target", "PPA:+1", "--encoder",
            "clip-probe:tiny", "--scale", "2", "--surrogate-layer", "3", "--grad-path", "unet",
            "--normalize-grad", "--out", "unused"]
    args = build_parser(argv).parse_args(argv)
    guidance = GuideConfig.from_args(args).guidance()
    assert (guidance.surrogate_layer, guidance.trunc_layer) == (3, None)
    assert guidance.grad_path == "unet" and guidance.normalize_grad is True
