"""Image networks named by one spec format, ``LIBRARY:NAME[@WEIGHTS]``, built by one registry.

Specs
-----
- ``timm:resnet18``, ``timm:test_vit`` (any :func:`timm.create_model` name);
- ``torchvision:resnet18``, ``torchvision:densenet121@IMAGENET1K_V1`` (any
  :func:`torchvision.models.get_model` name);
- ``open_clip:ViT-B-32@openai``, ``open_clip:hf-hub:org/repo`` (the image tower with
  :func:`load_model`, the whole image + text model with :func:`load_clip`); ``open_clip:tiny``
  is neuromem's 3 M-parameter test config;
- ``memnet:/path/to/checkpoint`` (a network trained by ``neuromem train-memnet``, see
  :mod:`neuromem.representations.memnet`).

``WEIGHTS`` is empty for seeded random weights, a local weight file (``.pt``/``.pth``/
``.safetensors`` state dict, or open_clip's checkpoint), or a library tag (timm ``pretrained``,
a torchvision weights name such as ``IMAGENET1K_V1``, an open_clip tag such as ``openai``);
tags only work when the weights are already cached, since neuromem never downloads at run time.

Other libraries plug in with :func:`register_network`. :func:`check_network` validates a spec
without building anything (jobs call it before Ray starts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from neuromem.errors import InputError, MissingWeightsError, UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``open_clip:tiny``: neuromem's seeded-random test config (the tower of ``clip-probe:tiny``).
TINY = "tiny"


@dataclass(frozen=True)
class ModelSpec:
    """A network named ``LIBRARY:NAME[@WEIGHTS]`` (see the module docstring).

    Attributes
    ----------
    library : str
        A registered library (:func:`available_libraries`).
    name : str
        Model name in that library (a checkpoint folder for ``memnet``).
    weights : str
        ``""`` (seeded random weights), a local weight file, or a library tag.
    """

    library: str
    name: str
    weights: str = ""

    @classmethod
    def parse(cls, text: str | ModelSpec) -> ModelSpec:
        """Parse ``LIBRARY:NAME[@WEIGHTS]`` (a :class:`ModelSpec` is returned as is).

        Raises
        ------
        UnknownNameError
            No ``:``, an empty name, or a library that is not registered.
        """
        if isinstance(text, ModelSpec):
            return text
        library, sep, rest = str(text).partition(":")
        if not sep or library not in _BUILDERS or not rest or rest.startswith("@"):
            raise UnknownNameError(
                f"network {text!r}: expected LIBRARY:NAME[@WEIGHTS] with LIBRARY one of "
                f"{', '.join(available_libraries())} (e.g. timm:resnet18, "
                "torchvision:resnet18@/w.pth, open_clip:ViT-B-32@openai, open_clip:tiny)"
            )
        name, _, weights = rest.partition("@")
        return cls(library, name, weights)

    @property
    def weights_file(self) -> Path | None:
        """The local weight file the spec names, or None (random weights or a library tag)."""
        return Path(self.weights).expanduser() if _looks_like_path(self.weights) else None

    def __str__(self) -> str:
        return f"{self.library}:{self.name}" + (f"@{self.weights}" if self.weights else "")


@dataclass
class LoadedModel:
    """An image network in evaluation mode and how to feed it.

    Attributes
    ----------
    module : nn.Module
        Takes normalised images ``(B, 3, S, S)``.
    image_size : int
        Side ``S`` in pixels of the input it expects.
    mean, std : tuple of float
        Per-channel normalisation of images in [0, 1].
    spec : str
        The spec it was loaded from.
    trained : bool
        False for random weights.
    files : list of Path
        Local weight files read.
    """

    module: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    spec: str
    trained: bool
    files: list[Path] = field(default_factory=list)

    def preprocess(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop float images in [0, 1] to the model's size and normalise."""
        from neuromem.encoders.preprocessing import normalise, resize_center_crop

        return normalise(resize_center_crop(images_b3hw, self.image_size), self.mean, self.std)

    def metadata(self) -> dict:
        """JSON-able description for outputs."""
        return {"spec": self.spec, "image_size": self.image_size, "trained": self.trained}


@dataclass
class LoadedClip(LoadedModel):
    """A whole open_clip model (image and text towers), from :func:`load_clip`.

    ``module`` is the ``open_clip.CLIP`` (``encode_image`` takes :meth:`preprocess`'s output,
    ``encode_text`` the tokenizer's); the other fields describe its image input.

    Attributes
    ----------
    tokenizer : callable
        ``tokenizer(list_of_str) -> LongTensor (N, context_length)``.
    """

    tokenizer: Callable | None = None


#: builder(spec, seed) -> LoadedModel, called with torch's RNG seeded by ``seed``.
NetworkBuilder = Callable[[ModelSpec, int], LoadedModel]
#: check(spec) -> None: raise on a spec that cannot be built, without building it.
NetworkCheck = Callable[[ModelSpec], None]

_BUILDERS: dict[str, NetworkBuilder] = {}
_CHECKS: dict[str, NetworkCheck] = {}


def register_network(
    library: str, builder: NetworkBuilder, check: NetworkCheck | None = None
) -> None:
    """Register ``builder(spec, seed) -> LoadedModel`` for specs ``library:NAME[@WEIGHTS]``.

    ``check(spec)``, optional, validates a spec cheaply (names, files) for :func:`check_network`.
    Registering a library again replaces the previous builder.
    """
    if not library or ":" in library or "@" in library:
        raise InputError(f"network library must be a name without ':' or '@', got {library!r}")
    _BUILDERS[library] = builder
    if check is None:
        _CHECKS.pop(library, None)
    else:
        _CHECKS[library] = check


def available_libraries() -> list[str]:
    """Registered libraries, sorted."""
    return sorted(_BUILDERS)


def check_network(spec: str | ModelSpec) -> ModelSpec:
    """Validate a spec without building the network; return it parsed.

    Raises
    ------
    UnknownNameError
        Unknown library, model name or weights tag.
    MissingWeightsError
        A weight file or checkpoint folder that does not exist.
    """
    spec = ModelSpec.parse(spec)
    weights_file = spec.weights_file
    if weights_file is not None and not weights_file.is_file():
        raise MissingWeightsError(f"weight file {spec.weights!r} of network {spec} does not exist")
    if spec.library in _CHECKS:
        _CHECKS[spec.library](spec)
    return spec


def load_model(
    spec: str | ModelSpec, *, image_size: int | None = None, seed: int = 0
) -> LoadedModel:
    """Build a network from its spec, in evaluation mode on the CPU, with frozen weights.

    Parameters
    ----------
    spec : str or ModelSpec
        ``LIBRARY:NAME[@WEIGHTS]``.
    image_size : int or None
        Input side in pixels; None: the model's own (timm's config, 224 for torchvision,
        the open_clip tower's). Convolutional networks accept any size; ViTs need theirs.
    seed : int
        Seed of random weights.

    Raises
    ------
    UnknownNameError
        Unknown library or model name.
    MissingWeightsError
        A weights tag whose files are not cached, or a missing weight file.
    """
    spec = check_network(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = _BUILDERS[spec.library](spec, seed)
    if image_size is not None:
        loaded.image_size = int(image_size)
    loaded.module.eval().requires_grad_(False)
    return loaded


def load_clip(
    spec: str | ModelSpec, *, seed: int = 0, device: str | torch.device = "cpu"
) -> LoadedClip:
    """The whole open_clip model of an ``open_clip:NAME[@PRETRAINED]`` spec, and its tokenizer.

    Parameters
    ----------
    spec : str or ModelSpec
        ``open_clip:ViT-B-32@openai``, ``open_clip:tiny`` ...
    seed : int
        Seed of random weights (``open_clip:NAME`` without weights).
    device : str or torch.device
        Where to put the weights.

    Raises
    ------
    InputError
        The spec is not an open_clip one.
    UnknownNameError, MissingWeightsError
        As :func:`load_model`.
    """
    import open_clip

    from neuromem.encoders.clip_probe import build_clip_model

    spec = check_network(spec)
    if spec.library != "open_clip":
        raise InputError(
            f"network {spec} has no text tower: a text and image model is named "
            "open_clip:NAME[@PRETRAINED] (e.g. open_clip:ViT-B-32@openai, open_clip:tiny)"
        )
    name = open_clip_name(spec)
    model, files = build_clip_model(name, spec.weights, seed=seed)
    model.requires_grad_(False)
    size, mean, std = _open_clip_input(model.visual)
    return LoadedClip(
        model.to(device).eval(), size, mean, std, str(spec), bool(spec.weights), files,
        tokenizer=open_clip.get_tokenizer(name),
    )


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file (``state_dict`` key unwrapped)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


# ----------------------------------------------------------------------------------------------
# timm


def _check_timm(spec: ModelSpec) -> None:
    import timm

    if spec.name not in timm.list_models():
        raise UnknownNameError(f"timm has no model {spec.name!r} (see timm.list_models())")


def _build_timm(spec: ModelSpec, seed: int) -> LoadedModel:
    import timm

    tag = bool(spec.weights) and spec.weights_file is None
    try:
        module = timm.create_model(spec.name, pretrained=tag)
    except (RuntimeError, OSError) as exc:
        raise MissingWeightsError(
            f"timm weights of {spec.name!r} are not available offline ({exc}); pass a local file "
            f"as timm:{spec.name}@/path/weights.safetensors"
        ) from exc
    files = []
    if spec.weights_file is not None:
        module.load_state_dict(read_state_dict(spec.weights_file))
        files.append(spec.weights_file)
    config = module.pretrained_cfg
    return LoadedModel(
        module,
        int(config.get("input_size", (3, 224, 224))[-1]),
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
        str(spec),
        bool(spec.weights),
        files,
    )


# ----------------------------------------------------------------------------------------------
# torchvision


def _check_torchvision(spec: ModelSpec) -> None:
    import torchvision

    if spec.name not in torchvision.models.list_models():
        raise UnknownNameError(
            f"torchvision has no model {spec.name!r} (see torchvision.models.list_models())"
        )


def _build_torchvision(spec: ModelSpec, seed: int) -> LoadedModel:
    import torchvision

    tag = spec.weights if spec.weights and spec.weights_file is None else None
    try:
        module = torchvision.models.get_model(spec.name, weights=tag)
    except (RuntimeError, OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"torchvision weights {tag!r} of {spec.name!r} are not available offline ({exc})"
        ) from exc
    files = []
    if spec.weights_file is not None:
        module.load_state_dict(read_state_dict(spec.weights_file))
        files.append(spec.weights_file)
    return LoadedModel(
        module, 224, IMAGENET_MEAN, IMAGENET_STD, str(spec), bool(spec.weights), files
    )


# ----------------------------------------------------------------------------------------------
# open_clip


def open_clip_name(spec: str | ModelSpec) -> str:
    """The name open_clip knows an ``open_clip:`` spec's model by (registers ``tiny``)."""
    from neuromem.encoders.clip_probe import (
        TINY_MODEL_CONFIG,
        TINY_MODEL_NAME,
        register_open_clip_config,
    )

    spec = ModelSpec.parse(spec)
    if spec.name == TINY:
        register_open_clip_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
        return TINY_MODEL_NAME
    return spec.name


def _check_open_clip(spec: ModelSpec) -> None:
    import open_clip

    name = open_clip_name(spec)
    if name.startswith("hf-hub:"):
        return
    if name not in open_clip.list_models():
        raise UnknownNameError(
            f"open_clip has no model {spec.name!r}; see open_clip.list_models() or use "
            "open_clip:tiny"
        )
    if spec.weights and spec.weights_file is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if spec.weights not in tags:
            raise UnknownNameError(
                f"{spec.weights!r} is neither a local weight file nor a pretrained tag of "
                f"open_clip model {spec.name!r} (tags: {', '.join(tags) or 'none'}); leave "
                "@WEIGHTS out for random weights"
            )


def _open_clip_input(visual: nn.Module) -> tuple[int, tuple, tuple]:
    import open_clip

    config = open_clip.get_model_preprocess_cfg(visual)
    size = config["size"]
    size = int(size if isinstance(size, int) else size[0])
    return size, tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])


def _build_open_clip(spec: ModelSpec, seed: int) -> LoadedModel:
    from neuromem.encoders.clip_probe import build_image_tower

    visual, files = build_image_tower(open_clip_name(spec), spec.weights, seed=seed)
    size, mean, std = _open_clip_input(visual)
    return LoadedModel(visual, size, mean, std, str(spec), bool(spec.weights), files)


# ----------------------------------------------------------------------------------------------
# memnet


def _check_memnet(spec: ModelSpec) -> None:
    from neuromem.representations.memnet import check_checkpoint

    check_checkpoint(spec.name)


def _build_memnet(spec: ModelSpec, seed: int) -> LoadedModel:
    from neuromem.representations.memnet import load_memnet

    net, config = load_memnet(spec.name)
    return LoadedModel(
        net, config["image_size"], tuple(config["mean"]), tuple(config["std"]), str(spec), True
    )


register_network("timm", _build_timm, _check_timm)
register_network("torchvision", _build_torchvision, _check_torchvision)
register_network("open_clip", _build_open_clip, _check_open_clip)
register_network("memnet", _build_memnet, _check_memnet)
