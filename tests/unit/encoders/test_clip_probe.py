"""The CLIP probe encoder: gradients, the straight-through surrogate, probe files, preprocessing
vs torchvision."""

from __future__ import annotations

import hashlib

import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.encoders.clip_probe import (
    TINY_MODEL_CONFIG,
    TINY_MODEL_NAME,
    load_clip_probe,
    save_clip_probe,
)
from neuromem.encoders.preprocessing import resize_center_crop
from neuromem.errors import InputError, MissingWeightsError


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("clip-probe:tiny")


@pytest.fixture(scope="module")
def reducer():
    return RoiReducer(load_roi_set("default"))


def _images(seed: int = 0, shape=(2, 3, 90, 70)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _pixel_grad(encoder, reducer, images, surrogate_layer=None, roi="FFA"):
    images = images.clone().requires_grad_(True)
    rois_br = reducer(encoder(images, surrogate_layer=surrogate_layer))
    rois_br[:, reducer.names.index(roi)].sum().backward()
    return rois_br.detach(), images.grad


def test_tiny_probe_attributes(encoder):
    assert encoder.spec == "clip-probe:tiny" and encoder.kind == "clip-probe"
    assert encoder.trained is False
    assert encoder.n_layers == TINY_MODEL_CONFIG["vision_cfg"]["layers"]
    assert encoder.input_size == 64 and encoder.clip_frames == 1
    assert not any(p.requires_grad for p in encoder.parameters())
    tower_params = sum(p.numel() for p in encoder.visual.parameters())
    assert 0.5e6 < tower_params < 3e6
    out = encoder(_images())
    assert out.shape == (2, 20484) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_roi_gradient_reaches_pixels(encoder, reducer):
    rois_br, grad = _pixel_grad(encoder, reducer, _images())
    assert rois_br.shape == (2, len(reducer.names))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_surrogate_keeps_values_and_changes_gradients(encoder, reducer):
    images = _images(1)
    full, grad_full = _pixel_grad(encoder, reducer, images)
    for layer in (1, 2):
        surrogate, grad_surrogate = _pixel_grad(encoder, reducer, images, surrogate_layer=layer)
        assert torch.equal(full, surrogate)
        assert torch.isfinite(grad_surrogate).all() and grad_surrogate.abs().sum() > 0
        assert not torch.allclose(grad_full, grad_surrogate)
    last, grad_last = _pixel_grad(encoder, reducer, images, surrogate_layer=encoder.n_layers)
    assert torch.equal(full, last) and torch.equal(grad_full, grad_last)


def test_trunc_layer_means_stop_the_gradient_path_so_the_probe_takes_only_full_depth(encoder):
    """One option, one meaning: the probe reads only its last block, so stopping the gradient
    path below it would leave none; it refuses and names the surrogate instead."""
    images = _images()
    torch.testing.assert_close(encoder(images, trunc_layer=encoder.n_layers), encoder(images))
    with pytest.raises(InputError, match="no gradient path.*surrogate_layer"):
        encoder(images, trunc_layer=2)


def test_surrogate_gradient_is_that_of_the_shallow_readout(encoder):
    """The gradient at layer k equals the gradient of the head on block-k tokens."""
    visual = encoder.visual
    images = _images(2).requires_grad_(True)
    encoder(images, surrogate_layer=2)[:, :50].sum().backward()
    expected_images = images.detach().clone().requires_grad_(True)
    pixels = resize_center_crop(expected_images, 64)
    mean = torch.tensor(encoder.image_mean)[:, None, None]
    std = torch.tensor(encoder.image_std)[:, None, None]
    tokens = visual._embeds((pixels - mean) / std)
    for block in visual.transformer.resblocks[:2]:
        tokens = block(tokens)
    pooled = visual.ln_post(tokens[:, 0]) @ visual.proj
    encoder.head(F.normalize(pooled, dim=-1))[:, :50].sum().backward()
    torch.testing.assert_close(images.grad, expected_images.grad)


def test_trunc_and_surrogate_layer_out_of_range(encoder):
    for bad in (0, encoder.n_layers + 1):
        with pytest.raises(InputError, match="trunc_layer must be in"):
            encoder(_images(), trunc_layer=bad)
        with pytest.raises(InputError, match="surrogate_layer must be in"):
            encoder(_images(), surrogate_layer=bad)


def test_bad_image_shapes(encoder):
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        encoder(torch.rand(2, 4, 32, 32))
    with pytest.raises(InputError, match="float"):
        encoder(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_clips_average_frames(encoder):
    clips = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.stack([encoder(clips[:, t]) for t in range(3)]).mean(0)
        torch.testing.assert_close(encoder.forward_clips(clips), expected)


def test_resize_matches_torchvision():
    images = _images(4, (2, 3, 90, 70))
    mine = resize_center_crop(images, 64)
    resized = TF.resize(images, [64], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    theirs = TF.center_crop(resized, [64, 64])
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_probe_file_round_trip_matches_open_clip(tmp_path):
    """A saved probe reloads; its output is the head applied to open_clip's own embedding."""
    generator = torch.Generator().manual_seed(5)
    weight_ve = torch.randn(20484, 64, generator=generator)
    bias_v = torch.randn(20484, generator=generator)
    path = save_clip_probe(
        tmp_path / "probe.safetensors", weight_ve, bias_v,
        model_name=TINY_MODEL_NAME, pretrained="", feature_norm="l2",
        training={"dataset": "unit-test", "alpha": 10.0}, tower_seed=7,
        model_config=TINY_MODEL_CONFIG,
    )
    encoder = load_encoder(f"clip-probe:{path}")
    assert encoder.trained is True and encoder.spec == f"clip-probe:{path}"
    meta = encoder.metadata()
    assert meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["config"]["training"] == {"dataset": "unit-test", "alpha": 10.0}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = open_clip.create_model(TINY_MODEL_NAME, pretrained=None).eval()
    images = _images(6, (3, 3, 64, 64))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
    with torch.no_grad():
        embedding = F.normalize(reference.encode_image((images - mean) / std), dim=-1)
        expected = embedding @ weight_ve.T + bias_v
        torch.testing.assert_close(encoder(images), expected, atol=1e-4, rtol=1e-4)


def test_probe_file_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="nope.safetensors"):
        load_clip_probe(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(InputError, match="not a neuromem CLIP probe"):
        load_clip_probe(other)
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a safetensors file"):
        load_clip_probe(text)
    with pytest.raises(InputError, match="20484"):
        save_clip_probe(tmp_path / "x.safetensors", torch.zeros(10, 64), torch.zeros(10),
                        model_name="ViT-B-32", pretrained="", feature_norm="l2", training={})


def test_missing_pretrained_tower_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = save_clip_probe(
        tmp_path / "b32.safetensors", torch.zeros(20484, 512), torch.zeros(20484),
        model_name="ViT-B-32", pretrained="laion2b_s34b_b79k", feature_norm="l2", training={},
    )
    with pytest.raises(MissingWeightsError, match="ViT-B-32.*laion2b_s34b_b79k"):
        load_clip_probe(path)
