"""Encoder registry: spec parsing, errors, custom encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuromem.encoders import (
    BrainEncoder,
    available_encoders,
    load_encoder,
    register_encoder,
    registry,
)
from neuromem.errors import InputError, MissingWeightsError, UnknownNameError


class MeanColourEncoder(BrainEncoder):
    """A toy encoder: every vertex responds with ``gain`` × the mean red value."""

    kind = "mean-colour"

    def __init__(self, gain: float, spec: str) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain))
        self.spec, self.trained, self.n_layers, self.input_size, self.clip_frames = (
            spec, False, 1, 8, 1)

    def forward(self, images_b3hw, trunc_layer=None):
        self.check_trunc_layer(trunc_layer)
        return (self.gain * images_b3hw[:, 0].mean(dim=(1, 2)))[:, None].expand(-1, 20484)

    def forward_clips(self, clips_bt3hw, trunc_layer=None):
        return self(clips_bt3hw.mean(dim=1), trunc_layer)

    def config(self):
        return {"gain": float(self.gain)}

    def weight_files(self) -> list[Path]:
        return []


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))


def test_builtin_kinds():
    assert {"clip-probe", "tribev2"} <= set(available_encoders())


def test_unknown_spec_lists_kinds():
    with pytest.raises(UnknownNameError) as info:
        load_encoder("resnet:tiny")
    message = str(info.value)
    assert "'resnet'" in message and "clip-probe" in message and "tribev2" in message


def test_bad_arguments():
    with pytest.raises(InputError, match="clip-probe:tiny"):
        load_encoder("clip-probe")
    with pytest.raises(MissingWeightsError, match="missing.safetensors"):
        load_encoder("clip-probe:/nowhere/missing.safetensors")


def test_custom_encoder_registration(clean_registry):
    register_encoder("mean-colour", lambda argument, spec: MeanColourEncoder(float(argument), spec))
    assert "mean-colour" in available_encoders()
    encoder = load_encoder("mean-colour:2.5")
    assert encoder.spec == "mean-colour:2.5" and not encoder.training
    assert not encoder.gain.requires_grad
    images = torch.zeros(3, 3, 8, 8)
    images[:, 0] = 0.4
    torch.testing.assert_close(encoder(images), torch.full((3, 20484), 1.0))
    meta = encoder.metadata()
    assert meta["kind"] == "mean-colour" and meta["config"] == {"gain": 2.5}
    assert len(meta["weights_sha256"]) == 64
    with pytest.raises(InputError, match=r"trunc_layer must be in 1\.\.1"):
        encoder(images, trunc_layer=2)
    assert encoder.check_surrogate_layer(None) is None
    with pytest.raises(InputError, match="has no straight-through surrogate"):
        encoder.check_surrogate_layer(1)  # only encoders that offer it take surrogate_layer
    with pytest.raises(InputError, match="without ':'"):
        register_encoder("a:b", lambda argument, spec: encoder)


def test_protocols_are_chosen_at_load_and_recorded(clean_registry):
    from neuromem.encoders.registry import encoder_protocols, resolve_protocol

    assert encoder_protocols("tribev2:tiny") == ("paper", "static", "fast")
    assert resolve_protocol("tribev2", None) == "paper"  # the kind's default, no weights read
    assert resolve_protocol("clip-probe:tiny", None) is None
    assert load_encoder("tribev2:tiny").metadata()["protocol"] == "paper"
    assert load_encoder("tribev2:tiny", protocol="fast").metadata()["protocol"] == "fast"
    assert load_encoder("clip-probe:tiny").metadata()["protocol"] is None
    with pytest.raises(InputError, match="has no still-image protocols"):
        load_encoder("clip-probe:tiny", protocol="static")
    with pytest.raises(UnknownNameError, match="paper, static, fast"):
        load_encoder("tribev2:tiny", protocol="movie")
    with pytest.raises(UnknownNameError, match="'resnet' is not registered"):
        resolve_protocol("resnet", None)
    # a custom kind with protocols gets the chosen one
    register_encoder("mean-colour", lambda argument, spec, protocol: MeanColourEncoder(
        {"bright": 2.0, "dim": 0.5}[protocol], spec), protocols=("bright", "dim"))
    assert float(load_encoder("mean-colour").gain) == 2.0
    assert float(load_encoder("mean-colour", protocol="dim").gain) == 0.5
