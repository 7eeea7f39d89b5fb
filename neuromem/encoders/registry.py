"""Encoder registry: turn a spec string (``kind`` or ``kind:argument``) into a BrainEncoder.

Built-in specs:

- ``clip-probe:tiny``: seeded-random tiny CLIP probe (offline, untrained, for tests);
- ``clip-probe:/path/probe.safetensors``: a fitted probe (format in :mod:`.clip_probe`);
- ``tribev2``: TRIBE v2 from the hub (``facebook/tribev2`` + ``facebook/vjepa2-vitg-fpc64-256``);
- ``tribev2:/local/folder``: TRIBE v2 from a folder holding ``config.yaml`` and ``best.ckpt``;
- ``tribev2:tiny``: seeded-random tiny TRIBE v2 (offline, untrained, for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from neuromem.errors import InputError, UnknownNameError

if TYPE_CHECKING:  # checking a spec needs no torch
    import torch

    from neuromem.encoders.base import BrainEncoder

# factory(argument, spec) -> BrainEncoder; ``argument`` is the text after the first ":" ("" if none)
EncoderFactory = Callable[[str, str], "BrainEncoder"]

_FACTORIES: dict[str, EncoderFactory] = {}


def register_encoder(kind: str, factory: EncoderFactory) -> None:
    """Register ``factory(argument, spec) -> BrainEncoder`` for specs ``kind`` / ``kind:argument``.

    Registering a kind again replaces the previous factory.
    """
    if not kind or ":" in kind:
        raise InputError(f"encoder kind must be a non-empty name without ':', got {kind!r}")
    _FACTORIES[kind] = factory


def available_encoders() -> list[str]:
    """Registered encoder kinds, sorted."""
    return sorted(_FACTORIES)


def load_encoder(spec: str, device: str | torch.device = "cpu") -> BrainEncoder:
    """Build the encoder named by ``spec`` on ``device``, in eval mode with frozen weights.

    Parameters
    ----------
    spec : str
        ``kind`` or ``kind:argument``, e.g. ``"clip-probe:tiny"``, ``"tribev2:/models/tribev2"``.
    device : str or torch.device
        Where to put the weights.

    Raises
    ------
    UnknownNameError
        ``kind`` is not registered (the message lists the registered kinds).
    MissingWeightsError
        The weights cannot be found locally or offline.
    """
    kind, _, argument = spec.partition(":")
    if kind not in _FACTORIES:
        raise UnknownNameError(
            f"unknown encoder {spec!r}: kind {kind!r} is not registered; "
            f"registered kinds: {', '.join(available_encoders())}"
        )
    encoder = _FACTORIES[kind](argument, spec)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


def _clip_probe(argument: str, spec: str) -> BrainEncoder:
    from neuromem.encoders import clip_probe

    if argument == "tiny":
        return clip_probe.build_tiny_clip_probe(spec=spec)
    if not argument:
        raise InputError("clip-probe needs a probe: 'clip-probe:tiny' or 'clip-probe:/path/probe.safetensors'")
    return clip_probe.load_clip_probe(argument, spec=spec)


register_encoder("clip-probe", _clip_probe)


def _tribev2(argument: str, spec: str) -> BrainEncoder:
    from neuromem.encoders import tribev2

    if argument == "tiny":
        return tribev2.build_tiny_tribev2(spec=spec)
    if not argument:
        return tribev2.load_tribev2_hub(spec=spec)
    return tribev2.load_tribev2_folder(argument, spec=spec)


register_encoder("tribev2", _tribev2)


def check_spec(spec: str) -> None:
    """Check an encoder spec without loading any weights (run before a job starts).

    The kind must be registered; an argument other than ``tiny`` that names a local path must
    exist.

    Raises
    ------
    UnknownNameError
        ``kind`` is not registered.
    MissingWeightsError
        The local file or folder the spec names does not exist.
    """
    import os

    from neuromem.errors import MissingWeightsError

    kind, _, argument = spec.partition(":")
    if kind not in _FACTORIES:
        raise UnknownNameError(
            f"unknown encoder {spec!r}: kind {kind!r} is not registered; "
            f"registered kinds: {', '.join(available_encoders())}"
        )
    if argument and argument != "tiny" and "://" not in argument:
        if not os.path.exists(os.path.expanduser(argument)):
            raise MissingWeightsError(f"encoder {spec!r}: {argument} does not exist")
