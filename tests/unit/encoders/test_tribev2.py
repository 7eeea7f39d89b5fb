"""TRIBE v2 encoder: head equivalence with upstream, checkpoint format, gradients, truncation."""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.encoders.tribe_head import FmriHead
from neuromem.encoders.tribev2 import (
    TINY_BUILD_ARGS,
    TINY_CONFIG,
    build_tiny_backbone,
    head_config,
    layer_groups,
)
from neuromem.errors import InputError, MissingWeightsError

UPSTREAM = Path(__file__).resolve().parents[3] / ".upstream"


@pytest.fixture(scope="module")
def upstream():
    """Upstream ``tribev2.model`` and ``exca`` from ``.upstream`` (installed by the Makefile).

    The directory goes at the END of ``sys.path``. The package ``__init__`` files of
    ``tribev2`` and ``neuraltrain`` (which import their whole training stacks, ~30 s) are
    skipped by registering bare package modules; ``neuralset.dataloader`` is replaced by a
    module holding ``SegmentData``, which ``tribev2.model`` imports only as a type: its
    ``forward`` reads ``batch.data``.
    """
    added = str(UPSTREAM) not in sys.path
    if added:
        sys.path.append(str(UPSTREAM))
    saved = {name: sys.modules.get(name) for name in ("tribev2", "neuraltrain", "neuraltrain.models", "neuralset", "neuralset.dataloader")}
    for name in ("tribev2", "neuraltrain", "neuraltrain.models"):
        package = types.ModuleType(name)
        package.__path__ = [str(UPSTREAM.joinpath(*name.split(".")))]
        sys.modules[name] = package
    neuralset = types.ModuleType("neuralset")
    neuralset.__path__ = []
    dataloader = types.ModuleType("neuralset.dataloader")
    dataloader.SegmentData = types.SimpleNamespace
    sys.modules["neuralset"], sys.modules["neuralset.dataloader"] = neuralset, dataloader
    model = importlib.import_module("tribev2.model")
    exca = importlib.import_module("exca")
    yield types.SimpleNamespace(FmriEncoder=model.FmriEncoder, ConfDict=exca.ConfDict)
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    if added:
        sys.path.remove(str(UPSTREAM))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tribev2:tiny")


@pytest.fixture(scope="module")
def reducer():
    return RoiReducer(load_roi_set("default"))


def _upstream_head(upstream, feature_dims, n_outputs, n_output_timesteps, **config):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = upstream.FmriEncoder(**config).build(
            feature_dims=feature_dims, n_outputs=n_outputs, n_output_timesteps=n_output_timesteps
        )
    return head.eval()


RELEASED_LAYOUT = dict(  # the released head: no combiner, low-rank read-out, one shared row
    hidden=96, low_rank_head=16, combiner=None, encoder={"depth": 2, "heads": 3},
    subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 0},
)
DEFAULT_LAYOUT = dict(  # upstream defaults: linear combiner, 3 subjects + shared row
    hidden=64, encoder={"depth": 1, "heads": 2},
    subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 3},
)


@pytest.mark.parametrize("layout", [RELEASED_LAYOUT, DEFAULT_LAYOUT], ids=["released", "default"])
def test_head_matches_upstream(upstream, layout):
    feature_dims = {"text": (2, 8), "audio": (1, 8), "video": (2, 16)}
    reference = _upstream_head(upstream, feature_dims, 20484, 3, **layout)
    brain = {**layout, "subject_layers": {"subject_dropout": 0.1}}
    state = reference.state_dict()
    config = head_config({"brain_model_config": brain},
                         {"feature_dims": feature_dims, "n_outputs": 20484},
                         n_subject_rows=state["predictor.weights"].shape[0])
    mine = FmriHead(config).eval()
    mine.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(2, 2, 16, 6, generator=generator)
    text = torch.randn(2, 2, 8, 6, generator=generator)
    subjects = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        for features in ({"video": video}, {"video": video, "text": text}):
            expected = reference(types.SimpleNamespace(data={**features, "subject_id": subjects}))
            torch.testing.assert_close(mine(features, 3), expected, atol=1e-5, rtol=0)


def test_layer_groups_follow_relative_depths():
    # ViT-g: 41 hidden states; depths 0.5, 0.75, 1 pick states 20, 30, 40.
    assert layer_groups(41, [0.5, 0.75, 1.0], "group_mean") == (
        tuple(range(20, 30)), tuple(range(30, 41)))
    assert layer_groups(41, [0.5, 0.75, 1.0], None) == ((20,), (30,), (40,))
    assert layer_groups(41, [0.5, 1.0], "mean") == ((20, 40),)
    assert layer_groups(41, [2 / 3], "group_mean") == ((26,),)
    # 20 cached states (0, 2, 4, ..., 40 rounded from linspace); picks 9, 14, 19 among them
    cached = [round(40 * i / 19) for i in range(20)]
    assert layer_groups(41, [0.5, 0.75, 1.0], "group_mean", cache_n_layers=20) == (
        tuple(cached[9:14]), tuple(cached[14:20]))


def test_roi_gradient_reaches_pixels(encoder, reducer):
    assert encoder.trained is False and encoder.n_layers == 4 and encoder.clip_frames == 2
    images = torch.rand(2, 3, 50, 40, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    rois_br = encoder.roi_responses(images, reducer)
    assert rois_br.shape == (2, len(reducer.names)) and torch.isfinite(rois_br).all()
    rois_br[:, reducer.names.index("PPA")].sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_truncation_keeps_values_and_changes_gradients(encoder):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def run(trunc_layer):
        x = images.clone().requires_grad_(True)
        out = encoder(x, trunc_layer=trunc_layer)
        out[:, :200].sum().backward()
        return out.detach(), x.grad

    full, grad_full = run(None)
    truncated, grad_trunc = run(2)  # the tiny head reads states 2 and 3-4
    assert torch.equal(full, truncated)
    assert torch.isfinite(grad_trunc).all() and grad_trunc.abs().sum() > 0
    assert not torch.allclose(grad_full, grad_trunc)
    last, grad_last = run(encoder.n_layers)
    assert torch.equal(full, last) and torch.equal(grad_full, grad_last)
    with pytest.raises(InputError, match="no gradient path"):
        encoder(images, trunc_layer=1)


def test_still_is_a_static_clip(encoder):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    clips = images[:, None].repeat(1, 2, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(encoder(images), encoder.forward_clips(clips))
        moving = encoder.forward_clips(torch.rand(2, 4, 3, 32, 32))
    assert moving.shape == (2, 20484)


def _write_release_folder(upstream, folder: Path, backbone_dir: Path) -> torch.nn.Module:
    """config.yaml (exca ConfDict YAML) + best.ckpt (Lightning layout) from an upstream head."""
    brain = TINY_CONFIG["brain_model_config"]
    reference = _upstream_head(
        upstream, TINY_BUILD_ARGS["feature_dims"], 20484, TINY_BUILD_ARGS["n_output_timesteps"],
        hidden=brain["hidden"], low_rank_head=brain["low_rank_head"], combiner=None,
        max_seq_len=brain["max_seq_len"], encoder=brain["encoder"],
        subject_layers={"subject_dropout": 0.1, "average_subjects": True, "n_subjects": 0},
    )
    config = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"],
              "video_feature": {"image": {"model_name": str(backbone_dir)}}}}
    folder.mkdir()
    (folder / "config.yaml").write_text(upstream.ConfDict(config).to_yaml())
    torch.save(
        {
            "epoch": 3,
            "global_step": 1200,
            "state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()},
            "model_build_args": TINY_BUILD_ARGS,
        },
        folder / "best.ckpt",
    )
    return reference


def test_loads_release_folder_format(upstream, tmp_path):
    backbone = build_tiny_backbone(seed=3)
    backbone.save_pretrained(tmp_path / "backbone")
    reference = _write_release_folder(upstream, tmp_path / "release", tmp_path / "backbone")
    assert "video_feature.image.model_name:" in (tmp_path / "release" / "config.yaml").read_text()

    encoder = load_encoder(f"tribev2:{tmp_path / 'release'}")
    assert encoder.trained is True and encoder.features_spec.layer_groups == ((2,), (3, 4))
    meta = encoder.metadata()
    digest = hashlib.sha256((tmp_path / "release" / "best.ckpt").read_bytes())
    digest.update((tmp_path / "backbone" / "model.safetensors").read_bytes())
    assert meta["weights_sha256"] == digest.hexdigest()

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # features computed independently with transformers' own hidden states
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        clips = ((images - mean) / std)[:, None].repeat(1, 2, 1, 1, 1)
        states = backbone(clips, skip_predictor=True, output_hidden_states=True).hidden_states
        pooled = [s.mean(dim=1) for s in states]
        video = torch.stack([pooled[2], (pooled[3] + pooled[4]) / 2], dim=1)
        batch = types.SimpleNamespace(data={
            "video": video[..., None].expand(-1, -1, -1, 6),
            "subject_id": torch.zeros(2, dtype=torch.long),
        })
        reference.pooler = torch.nn.AdaptiveAvgPool1d(3)
        expected = reference(batch).mean(dim=-1)
        torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=1e-5)


def test_missing_weights_name_the_files(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match=r"config\.yaml, best\.ckpt.*facebook/tribev2"):
        load_encoder("tribev2")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.yaml").write_text("data: {}\n")
    with pytest.raises(MissingWeightsError, match=r"best\.ckpt"):
        load_encoder(f"tribev2:{tmp_path / 'partial'}")


def test_missing_backbone_and_bad_checkpoint(upstream, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _write_release_folder(upstream, tmp_path / "release", tmp_path / "absent-backbone")
    with pytest.raises(MissingWeightsError, match="V-JEPA2 backbone .*absent-backbone"):
        load_encoder(f"tribev2:{tmp_path / 'release'}")
    (tmp_path / "release" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read TRIBE v2 checkpoint"):
        load_encoder(f"tribev2:{tmp_path / 'release'}")
