"""Target signatures: which ROIs to raise or lower, and the weighted ROI objective.

A target is written ``"roi_PPA:+1,roi_RSC:-1"``: ROI columns with signed weights. The
objective of an image is ``sum_r w_r * roi_r(image)``, the mean predicted response of each
ROI's vertices weighted by its target weight; guidance maximises it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from neuromem.cortex.rois import roi_column
from neuromem.errors import InputError, UnknownNameError


def parse_target(spec: str) -> dict[str, float]:
    """Parse ``"roi_PPA:+1,roi_RSC:-1"`` into ``{"roi_PPA": 1.0, "roi_RSC": -1.0}``.

    ROI names may be typed with or without ``roi_`` (``"PPA:+1,RSC:-1"`` is the same target).
    A name without a weight (``"PPA"``) has weight +1.

    Raises
    ------
    InputError
        On an empty spec, a weight that is not a finite number, or a repeated ROI.
    """
    weights: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        if not name.strip():
            raise InputError(f"empty ROI name in target {spec!r} (format: 'PPA:+1,RSC:-1')")
        name = roi_column(name)
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise InputError(
                f"target weight {value!r} of {name} is not a number "
                "(format: 'roi_PPA:+1,roi_RSC:-1')"
            ) from None
        if not math.isfinite(weight):
            raise InputError(f"target weight of {name} must be finite, got {value!r}")
        if name in weights:
            raise InputError(f"ROI {name} appears twice in target {spec!r}")
        weights[name] = weight
    if not weights:
        raise InputError(f"empty target {spec!r}; expected e.g. 'roi_PPA:+1,roi_RSC:-1'")
    return weights


def format_target(weights: dict[str, float]) -> str:
    """Inverse of :func:`parse_target`: ``{"roi_PPA": 1.0}`` → ``"roi_PPA:+1"``."""
    return ",".join(f"{name}:{weight:+g}" for name, weight in weights.items())


class RoiObjective:
    """Weighted sum of ROI responses, differentiable.

    Parameters
    ----------
    reducer : callable
        Maps ``responses_bv`` ``(B, 20484)`` to ``roi_br`` ``(B, R)`` (a
        :class:`neuromem.cortex.reduce.RoiReducer`); needs a ``column_names`` attribute
        listing the ``R`` ROI columns.
    weights : dict of str to float
        Target weight per ROI column (see :func:`parse_target`).
    """

    def __init__(
        self, reducer: Callable[[torch.Tensor], torch.Tensor], weights: dict[str, float]
    ) -> None:
        columns: Sequence[str] = list(reducer.column_names)
        unknown = [name for name in weights if name not in columns]
        if unknown:
            raise UnknownNameError(
                f"target ROI(s) {unknown} not in the ROI set; known: {', '.join(columns)}"
            )
        self.reducer = reducer
        self.weights = dict(weights)
        self.columns = columns
        self._weight_r = torch.tensor(
            [weights.get(name, 0.0) for name in columns], dtype=torch.float32
        )

    def from_rois(self, roi_br: torch.Tensor) -> torch.Tensor:
        """Objective per image from ROI responses ``(B, R)``; returns ``(B,)``."""
        return roi_br @ self._weight_r.to(device=roi_br.device, dtype=roi_br.dtype)

    def __call__(self, responses_bv: torch.Tensor) -> torch.Tensor:
        """Objective per image from vertex responses ``(B, 20484)``; returns ``(B,)``."""
        return self.from_rois(self.reducer(responses_bv))


def score_rois(
    encoder: torch.nn.Module,
    reducer: Callable[[torch.Tensor], torch.Tensor],
    images_b3hw: torch.Tensor,
    batch_size: int = 16,
) -> np.ndarray:
    """Every ROI's predicted response to images, without gradients.

    Parameters
    ----------
    encoder : BrainEncoder
    reducer : RoiReducer
    images_b3hw : torch.Tensor
        ``(B, 3, H, W)`` in ``[0, 1]``, any device.
    batch_size : int
        Images per encoder call.

    Returns
    -------
    numpy.ndarray
        ``roi_br``, float32, shape ``(B, R)`` in ``reducer.column_names`` order.
    """
    param = next(encoder.parameters())
    chunks = []
    with torch.no_grad():
        for start in range(0, images_b3hw.shape[0], batch_size):
            batch = images_b3hw[start : start + batch_size].to(param.device, param.dtype)
            chunks.append(reducer(encoder(batch).float()).cpu())
    return torch.cat(chunks).numpy().astype(np.float32)


class ClipTextSimilarity:
    """Cosine similarity of open_clip image and text embeddings (prompt fidelity).

    Parameters
    ----------
    model_name : str
        open_clip model name (``"ViT-B-32"``), or ``"tiny"`` for neuromem's seeded-random
        tiny CLIP (offline tests; its numbers mean nothing).
    pretrained : str
        open_clip pretrained tag or local weight file; ``""`` for random weights.
    device : str or torch.device
    """

    def __init__(self, model_name: str, pretrained: str = "", device="cpu") -> None:
        import open_clip

        from neuromem.encoders.clip_probe import (
            TINY_MODEL_CONFIG,
            TINY_MODEL_NAME,
            TINY_SEED,
            register_open_clip_config,
        )

        if model_name == "tiny":
            register_open_clip_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
            model_name, pretrained = TINY_MODEL_NAME, ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = open_clip.create_model(model_name, pretrained=pretrained or None)
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(model.visual)
        size = cfg["size"]
        self.input_size = int(size if isinstance(size, int) else size[0])
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.device = device

    def __call__(self, images_b3hw: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
        """Similarity of image ``i`` to prompt ``i``: ``(B,)`` float64 in ``[-1, 1]``."""
        from neuromem.encoders.preprocessing import normalise, resize_center_crop

        if len(prompts) != images_b3hw.shape[0]:
            raise InputError(f"need one prompt per image, got {len(prompts)} for "
                             f"{images_b3hw.shape[0]} images")
        pixels = normalise(resize_center_crop(images_b3hw.float().to(self.device),
                                              self.input_size), self.mean, self.std)
        with torch.no_grad():
            image_be = torch.nn.functional.normalize(self.model.encode_image(pixels), dim=-1)
            tokens = self.tokenizer(list(prompts)).to(self.device)
            text_be = torch.nn.functional.normalize(self.model.encode_text(tokens), dim=-1)
        return (image_be * text_be).sum(dim=-1).double().cpu().numpy()
