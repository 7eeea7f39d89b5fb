"""The model-spec registry (neuromem.networks) on tiny seeded-random networks."""

from __future__ import annotations

import pytest
import torch

from neuromem.errors import InputError, MissingWeightsError, UnknownNameError
from neuromem.networks import (
    LoadedModel,
    ModelSpec,
    available_libraries,
    check_network,
    load_clip,
    load_model,
    register_network,
)


def test_spec_parse_round_trip_and_errors():
    spec = ModelSpec.parse("open_clip:ViT-B-32@/w/file.pt")
    assert (spec.library, spec.name, spec.weights) == ("open_clip", "ViT-B-32", "/w/file.pt")
    assert str(spec) == "open_clip:ViT-B-32@/w/file.pt"
    assert spec.weights_file is not None
    tagged = ModelSpec.parse("open_clip:ViT-B-32@openai")
    assert tagged.weights == "openai" and tagged.weights_file is None
    hub = ModelSpec.parse("open_clip:hf-hub:org/repo")
    assert (hub.name, hub.weights) == ("hf-hub:org/repo", "")
    assert ModelSpec.parse("timm:resnet18").weights == ""
    for bad in ("keras:resnet", "resnet18", "timm:", "timm:@w"):
        with pytest.raises(UnknownNameError, match="LIBRARY:NAME"):
            ModelSpec.parse(bad)


def test_check_network_refuses_unknown_names_tags_and_missing_files(tmp_path):
    assert check_network("open_clip:ViT-B-32@openai").weights == "openai"  # names only
    check_network("open_clip:tiny")
    check_network("timm:test_resnet")
    check_network("torchvision:resnet18")
    with pytest.raises(UnknownNameError, match="timm has no model"):
        check_network("timm:no_such_net")
    with pytest.raises(UnknownNameError, match="torchvision has no model"):
        check_network("torchvision:no_such_net")
    with pytest.raises(UnknownNameError, match="open_clip has no model"):
        check_network("open_clip:ViT-B-33@openai")
    with pytest.raises(UnknownNameError, match="pretrained tag"):
        check_network("open_clip:ViT-B-32@opnai")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        check_network(f"timm:test_resnet@{tmp_path}/missing.safetensors")
    with pytest.raises(MissingWeightsError, match="not a memnet checkpoint"):
        check_network(f"memnet:{tmp_path}")


def test_random_weights_follow_the_seed_and_local_weights_load(tmp_path):
    a = load_model("timm:test_resnet", seed=3).module.state_dict()
    b = load_model("timm:test_resnet", seed=3).module.state_dict()
    c = load_model("timm:test_resnet", seed=4).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    path = tmp_path / "w.pt"
    torch.save(c, path)
    loaded = load_model(f"timm:test_resnet@{path}", seed=3)
    assert loaded.trained and loaded.files == [path]
    state = loaded.module.state_dict()
    assert all(torch.equal(state[k], c[k]) for k in c)
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_load_clip_gives_the_image_tower_of_load_model_and_a_text_tower():
    clip = load_clip("open_clip:tiny", seed=0)
    tower = load_model("open_clip:tiny", seed=0)
    assert (clip.image_size, clip.mean, clip.std) == (tower.image_size, tower.mean, tower.std)
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        from_clip = clip.module.encode_image(clip.preprocess(images))
        from_tower = tower.module(tower.preprocess(images))
        text = clip.module.encode_text(clip.tokenizer(["a photo of a dog", "a cat"]))
    torch.testing.assert_close(from_clip, from_tower)
    assert text.shape == from_clip.shape == (2, 64)
    with pytest.raises(InputError, match="no text tower"):
        load_clip("timm:test_resnet")


def test_open_clip_spec_builds_the_model_of_the_probes_clip_model_spec():
    from neuromem.probes.features import ClipModelSpec, load_clip_model

    old, _ = load_clip_model(ClipModelSpec("tiny", "", seed=5))
    new = load_clip("open_clip:tiny", seed=5).module
    old_state, new_state = old.state_dict(), new.state_dict()
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)


def test_register_network_plugs_in_a_library():
    def build(spec: ModelSpec, seed: int) -> LoadedModel:
        width = int(spec.name)
        return LoadedModel(torch.nn.Conv2d(3, width, 3), 16, (0.5,) * 3, (0.5,) * 3, str(spec),
                           False)

    def check(spec: ModelSpec) -> None:
        if not spec.name.isdigit():
            raise UnknownNameError(f"toy network needs a width, got {spec.name!r}")

    register_network("toy", build, check)
    try:
        assert "toy" in available_libraries()
        assert load_model("toy:5", seed=1).module.out_channels == 5
        with pytest.raises(UnknownNameError, match="needs a width"):
            load_model("toy:wide")
    finally:
        from neuromem import networks

        networks._BUILDERS.pop("toy")
        networks._CHECKS.pop("toy")
    with pytest.raises(InputError, match="without ':'"):
        register_network("a:b", build)
