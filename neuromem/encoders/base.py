"""The brain-encoder interface: pixels in, 20,484 fsaverage5 vertex responses out.

Every encoder takes float images ``(B, 3, H, W)`` in ``[0, 1]`` of any size and resizes and
normalises them itself, differentiably, so a reward built on its output can be backpropagated
to the pixels (brain-guided diffusion, DRaFT).

Gradient truncation
-------------------
``trunc_layer=k`` (``1 <= k <= n_layers``) leaves the *value* of the prediction unchanged and
cuts only the *gradient* path below backbone depth ``k``: backbone blocks deeper than ``k``
receive no gradient, so the gradient reaching the pixels flows through blocks ``1..k`` only.
``trunc_layer=None`` and ``trunc_layer=n_layers`` are the same. How each encoder achieves this
is documented in its module; an encoder whose read-out sees only its last block (the CLIP
probe) has no gradient path left below it and refuses ``trunc_layer < n_layers``.

Straight-through surrogate
--------------------------
``surrogate_layer=k``, offered by encoders with ``has_surrogate`` (the CLIP probe), is a
different thing: the *value* of the full encoder with the *gradient* of its read-out applied
to the states after block ``k``, as if the backbone ended there. Only encoders that offer it
take the keyword.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from neuromem.cortex.surface import N_VERTICES
from neuromem.errors import InputError

__all__ = ["N_VERTICES", "BrainEncoder"]


class BrainEncoder(torch.nn.Module, ABC):
    """Base class of image → cortical-surface encoders.

    Attributes
    ----------
    spec : str
        The string the encoder was loaded from (``"clip-probe:tiny"``, ``"tribev2"`` ...);
        recorded in every output.
    kind : str
        Registry kind (``"clip-probe"``, ``"tribev2"``).
    trained : bool
        False for seeded-random test encoders (``:tiny``), whose numbers mean nothing.
    n_layers : int
        Backbone depth; valid ``trunc_layer`` values are ``1..n_layers``.
    input_size : int
        Side, in pixels, of the square the backbone sees.
    clip_frames : int
        Frames to decode per video clip for :meth:`forward_clips`.
    protocols : tuple of str
        The still-image protocols the encoder offers (empty: an image is seen as one image).
    protocol : str or None
        The protocol :meth:`forward` uses (None when the encoder has none).
    has_surrogate : bool
        Whether :meth:`forward` takes ``surrogate_layer`` (module docstring).
    native_inputs : bool
        The encoder reads its inputs as its upstream does, so scoring must not resample them
        first: uint8 stills at their own size (``forward_stills(images)``) and video files with
        upstream's frame timing (``read_video(payload)`` then ``video_timecourse(video)``,
        ``(T, 20484)``). False: inputs are decoded to ``input_size`` squares.
    """

    spec: str
    kind: str
    trained: bool
    n_layers: int
    input_size: int
    clip_frames: int
    protocols: tuple[str, ...] = ()
    protocol: str | None = None
    has_surrogate: bool = False
    native_inputs: bool = False

    @abstractmethod
    def forward(
        self, images_b3hw: torch.Tensor, trunc_layer: int | None = None
    ) -> torch.Tensor:
        """Predicted vertex responses to still images.

        Parameters
        ----------
        images_b3hw : torch.Tensor
            Float images in ``[0, 1]``, shape ``(B, 3, H, W)``, any ``H, W``.
        trunc_layer : int or None
            Stop the gradient path at this backbone depth (value unchanged); None: full path.

        Returns
        -------
        torch.Tensor
            ``responses_bv``, shape ``(B, 20484)``, float32.
        """

    @abstractmethod
    def forward_clips(
        self, clips_bt3hw: torch.Tensor, trunc_layer: int | None = None
    ) -> torch.Tensor:
        """Predicted vertex responses to video clips ``(B, T, 3, H, W)`` in ``[0, 1]``.

        Returns ``responses_bv`` of shape ``(B, 20484)``.
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description of the architecture and preprocessing."""

    @abstractmethod
    def weight_files(self) -> list[Path]:
        """Local files the weights were read from (empty for seeded-random weights)."""

    def roi_responses(
        self,
        images_b3hw: torch.Tensor,
        reducer: Callable[[torch.Tensor], torch.Tensor],
        trunc_layer: int | None = None,
    ) -> torch.Tensor:
        """Mean response per ROI, shape ``(B, R)``: ``reducer(self(images_b3hw, trunc_layer))``.

        ``reducer`` is a :class:`neuromem.cortex.reduce.RoiReducer` (differentiable).
        """
        return reducer(self(images_b3hw, trunc_layer=trunc_layer))

    def check_trunc_layer(self, trunc_layer: int | None) -> int:
        """Return the effective truncation depth (``n_layers`` for None) or raise InputError."""
        if trunc_layer is None:
            return self.n_layers
        if not 1 <= int(trunc_layer) <= self.n_layers:
            raise InputError(
                f"trunc_layer must be in 1..{self.n_layers} for encoder {self.spec!r}, "
                f"got {trunc_layer}"
            )
        return int(trunc_layer)

    def check_surrogate_layer(self, surrogate_layer: int | None) -> int | None:
        """Return the straight-through surrogate depth (None: none) or raise InputError."""
        if surrogate_layer is None:
            return None
        if not self.has_surrogate:
            raise InputError(
                f"encoder {self.spec!r} has no straight-through surrogate (surrogate_layer); "
                "use trunc_layer to stop its gradient path at a depth"
            )
        if not 1 <= int(surrogate_layer) <= self.n_layers:
            raise InputError(
                f"surrogate_layer must be in 1..{self.n_layers} for encoder {self.spec!r}, "
                f"got {surrogate_layer}"
            )
        return int(surrogate_layer)

    def metadata(self) -> dict[str, Any]:
        """Provenance recorded next to every output.

        Returns
        -------
        dict
            ``spec``, ``kind``, ``protocol`` (None for encoders without still-image
            protocols), ``weights_sha256`` (over the weight files, or over the state dict when
            the weights are seeded-random), ``weight_files``, ``trained``, ``config``.
        """
        files = self.weight_files()
        if "_weights_sha256" not in self.__dict__:
            self._weights_sha256 = (
                _sha256_files(files) if files else _sha256_state_dict(self.state_dict())
            )
        return {
            "spec": self.spec,
            "kind": self.kind,
            "protocol": self.protocol,
            "weights_sha256": self._weights_sha256,
            "weight_files": [str(p) for p in files],
            "trained": self.trained,
            "config": json.loads(json.dumps(self.config())),
        }


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _sha256_state_dict(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
