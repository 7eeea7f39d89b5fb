"""Encoder registry: turn a spec string (``kind`` or ``kind:argument``) into a BrainEncoder.

Built-in specs:

- ``clip-probe:tiny``: seeded-random tiny CLIP probe (offline, untrained, for tests);
- ``clip-probe:/path/probe.safetensors``: a fitted probe (format in :mod:`.clip_probe`);
- ``tribev2``: TRIBE v2 from the hub (``facebook/tribev2`` + ``facebook/vjepa2-vitg-fpc64-256``);
- ``tribev2:/local/folder``: TRIBE v2 from a folder holding ``config.yaml`` and ``best.ckpt``;
- ``tribev2:tiny``: seeded-random tiny TRIBE v2 (offline, untrained, for tests).

Still-image protocols
---------------------
An encoder kind may offer still-image protocols: how it presents one image (TRIBE v2 reads
videos; its protocols are ``paper``, the default, ``static`` and ``fast``, see
:mod:`neuromem.encoders.tribe_protocols`). ``load_encoder(spec, protocol=...)`` picks one; the
spec itself never names it. ``protocol=None`` means the kind's default. Asking a kind without
protocols (the CLIP probe, which sees an image as one image) for a protocol raises
:class:`InputError` rather than silently ignoring it. The protocol used is recorded in the
encoder's ``metadata()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from neuromem.encoders.tribe_protocols import PROTOCOLS as TRIBE_PROTOCOLS
from neuromem.errors import InputError, UnknownNameError

if TYPE_CHECKING:  # checking a spec needs no torch
    import torch

    from neuromem.encoders.base import BrainEncoder

# factory(argument, spec) -> BrainEncoder, or factory(argument, spec, protocol) for kinds with
# still-image protocols; ``argument`` is the text after the first ":" ("" if none)
EncoderFactory = Callable[..., "BrainEncoder"]

_FACTORIES: dict[str, EncoderFactory] = {}
_PROTOCOLS: dict[str, tuple[str, ...]] = {}


def register_encoder(kind: str, factory: EncoderFactory, protocols: Sequence[str] = ()) -> None:
    """Register a factory for specs ``kind`` / ``kind:argument``.

    Parameters
    ----------
    kind : str
        Name before the first ``:`` of a spec.
    factory : callable
        ``factory(argument, spec) -> BrainEncoder``; with ``protocols``,
        ``factory(argument, spec, protocol)``.
    protocols : sequence of str
        Still-image protocols the kind offers, its default first; empty: none.

    Registering a kind again replaces the previous factory.
    """
    if not kind or ":" in kind:
        raise InputError(f"encoder kind must be a non-empty name without ':', got {kind!r}")
    _FACTORIES[kind] = factory
    _PROTOCOLS[kind] = tuple(protocols)


def available_encoders() -> list[str]:
    """Registered encoder kinds, sorted."""
    return sorted(_FACTORIES)


def encoder_protocols(spec: str) -> tuple[str, ...]:
    """Still-image protocols the encoder named by ``spec`` offers, its default first.

    Raises
    ------
    UnknownNameError
        The spec's kind is not registered.
    """
    return _PROTOCOLS[_kind(spec)]


def reads_videos(spec: str) -> bool:
    """Whether the encoder named by ``spec`` reads videos (offers still-image protocols): it then
    decodes its own inputs (``native_inputs``) and predicts time courses."""
    return bool(encoder_protocols(spec))


def resolve_protocol(spec: str, protocol: str | None) -> str | None:
    """The protocol an encoder will use: ``protocol``, or the kind's default when None.

    Checks the choice without loading any weights (run it before a job starts).

    Returns
    -------
    str or None
        None for a kind without protocols (and ``protocol=None``).

    Raises
    ------
    UnknownNameError
        Unknown kind, or a protocol the kind does not offer.
    InputError
        A protocol asked of a kind that has none.
    """
    offered = encoder_protocols(spec)
    if protocol is None:
        return offered[0] if offered else None
    if not offered:
        raise InputError(
            f"encoder {spec!r} has no still-image protocols (it sees an image as one image); "
            f"leave the protocol out"
        )
    if protocol not in offered:
        raise UnknownNameError(
            f"encoder {spec!r} has no protocol {protocol!r}; choose one of {', '.join(offered)}"
        )
    return protocol


def load_encoder(
    spec: str, device: str | torch.device = "cpu", protocol: str | None = None
) -> BrainEncoder:
    """Build the encoder named by ``spec`` on ``device``, in eval mode with frozen weights.

    Parameters
    ----------
    spec : str
        ``kind`` or ``kind:argument``, e.g. ``"clip-probe:tiny"``, ``"tribev2:/models/tribev2"``.
    device : str or torch.device
        Where to put the weights.
    protocol : str or None
        Still-image protocol (see the module docstring); None: the kind's default.

    Raises
    ------
    UnknownNameError
        ``kind`` is not registered (the message lists the registered kinds), or the kind has
        no such protocol.
    InputError
        A protocol was asked of a kind that has none.
    MissingWeightsError
        The weights cannot be found locally or offline.
    """
    chosen = resolve_protocol(spec, protocol)
    kind, _, argument = spec.partition(":")
    if chosen is None:
        encoder = _FACTORIES[kind](argument, spec)
    else:
        encoder = _FACTORIES[kind](argument, spec, chosen)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


def _kind(spec: str) -> str:
    kind = spec.partition(":")[0]
    if kind not in _FACTORIES:
        raise UnknownNameError(
            f"unknown encoder {spec!r}: kind {kind!r} is not registered; "
            f"registered kinds: {', '.join(available_encoders())}"
        )
    return kind


def _clip_probe(argument: str, spec: str) -> BrainEncoder:
    from neuromem.encoders import clip_probe

    if argument == "tiny":
        return clip_probe.build_tiny_clip_probe(spec=spec)
    if not argument:
        raise InputError("clip-probe needs a probe: 'clip-probe:tiny' or 'clip-probe:/path/probe.safetensors'")
    return clip_probe.load_clip_probe(argument, spec=spec)


register_encoder("clip-probe", _clip_probe)


def _tribev2(argument: str, spec: str, protocol: str) -> BrainEncoder:
    from neuromem.encoders import tribev2

    if argument == "tiny":
        return tribev2.build_tiny_tribev2(spec=spec, protocol=protocol)
    if not argument:
        return tribev2.load_tribev2_hub(spec=spec, protocol=protocol)
    return tribev2.load_tribev2_folder(argument, spec=spec, protocol=protocol)


register_encoder("tribev2", _tribev2, protocols=TRIBE_PROTOCOLS)


def check_spec(spec: str, protocol: str | None = None) -> str | None:
    """Check an encoder spec (and protocol) without loading any weights; run before a job starts.

    The kind must be registered and offer ``protocol``; an argument other than ``tiny`` that
    names a local path must exist.

    Returns
    -------
    str or None
        The protocol the encoder will use (:func:`resolve_protocol`).

    Raises
    ------
    UnknownNameError
        ``kind`` is not registered, or has no such protocol.
    InputError
        A protocol asked of a kind that has none.
    MissingWeightsError
        The local file or folder the spec names does not exist.
    """
    import os

    from neuromem.errors import MissingWeightsError

    chosen = resolve_protocol(spec, protocol)
    argument = spec.partition(":")[2]
    if argument and argument != "tiny" and "://" not in argument:
        if not os.path.exists(os.path.expanduser(argument)):
            raise MissingWeightsError(f"encoder {spec!r}: {argument} does not exist")
    return chosen
