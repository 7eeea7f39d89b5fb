"""CLIP image features exactly as a fitted ``clip-probe`` encoder will compute them.

Features come from :meth:`neuromem.encoders.clip_probe.ClipProbeEncoder.features` (same resize,
crop, normalisation and feature norm), so a probe fitted on them reproduces its predictions when
loaded with :func:`neuromem.encoders.load_encoder`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from neuromem.encoders.base import N_VERTICES
from neuromem.encoders.clip_probe import (
    TINY_MODEL_CONFIG,
    TINY_MODEL_NAME,
    ClipProbeEncoder,
    build_image_tower,
    register_open_clip_config,
)
from neuromem.errors import UnknownNameError

#: ``--model tiny``: the tiny seeded-random open_clip config used by ``clip-probe:tiny``.
TINY = "tiny"


@dataclass(frozen=True)
class ClipModelSpec:
    """Which open_clip model computes the features.

    Attributes
    ----------
    model_name : str
        open_clip model name (``"ViT-B-32"``, ``"hf-hub:org/repo"``) or ``"tiny"``.
    pretrained : str
        open_clip pretrained tag (``"openai"``), a local weight file, or ``""`` for random
        weights drawn with ``seed``.
    seed : int
        Seed of random weights (used only when ``pretrained`` is ``""``).
    feature_norm : {"l2", "none"}
        Normalisation of the embedding.
    """

    model_name: str = "ViT-B-32"
    pretrained: str = "openai"
    seed: int = 0
    feature_norm: str = "l2"

    @property
    def open_clip_name(self) -> str:
        """The name open_clip knows the model by."""
        return TINY_MODEL_NAME if self.model_name == TINY else self.model_name

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The open_clip config to register for a model open_clip does not ship, else None."""
        return TINY_MODEL_CONFIG if self.model_name == TINY else None

    def validate(self) -> None:
        """Raise :class:`UnknownNameError` for a model name or pretrained tag open_clip lacks.

        Cheap (nothing is built or downloaded), so jobs call it before starting Ray.
        """
        self.register()
        name = self.open_clip_name
        if name.startswith("hf-hub:"):
            return
        if name not in open_clip.list_models():
            raise UnknownNameError(
                f"open_clip has no model {name!r}; see open_clip.list_models() or use 'tiny'"
            )
        if self.pretrained and not Path(self.pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(name)
            if self.pretrained not in tags:
                raise UnknownNameError(
                    f"{self.pretrained!r} is neither a local weight file nor a pretrained tag of "
                    f"{name!r} (tags: {', '.join(tags) or 'none'}); use '' for random weights"
                )

    def register(self) -> None:
        """Make a custom config known to open_clip (no-op for shipped models)."""
        if self.model_config is not None:
            register_open_clip_config(self.open_clip_name, self.model_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_feature_encoder(spec: ClipModelSpec, device: str | torch.device = "cpu") -> ClipProbeEncoder:
    """A :class:`ClipProbeEncoder` around the spec's image tower with a zero head.

    Only its :meth:`~ClipProbeEncoder.features` are used; the zero head keeps the module valid.
    """
    spec.register()
    visual, files = build_image_tower(spec.open_clip_name, spec.pretrained, seed=spec.seed)
    head = torch.nn.Linear(visual.output_dim, N_VERTICES)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    encoder = ClipProbeEncoder(
        visual,
        head,
        spec=f"clip-features:{spec.model_name}",
        model_name=spec.open_clip_name,
        pretrained=spec.pretrained,
        feature_norm=spec.feature_norm,
        trained=False,
        files=files,
    )
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


@torch.inference_mode()
def image_features(encoder: ClipProbeEncoder, images_b3hw: torch.Tensor) -> np.ndarray:
    """Features ``(B, E)`` float32 of float images ``(B, 3, H, W)`` in [0, 1]."""
    images_b3hw = images_b3hw.to(next(encoder.parameters()).device)
    return encoder.features(images_b3hw).float().cpu().numpy()


def load_clip_model(spec: ClipModelSpec, device: str | torch.device = "cpu"):
    """The whole open_clip model (image and text towers) and its tokenizer, in eval mode.

    Returns
    -------
    model : open_clip.CLIP
    tokenizer : callable
        ``tokenizer(list_of_str) -> LongTensor (N, context_length)``.
    """
    spec.register()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = open_clip.create_model(spec.open_clip_name, pretrained=spec.pretrained or None)
    model.requires_grad_(False)
    return model.to(device).eval(), open_clip.get_tokenizer(spec.open_clip_name)


class ProbeFeatureModel:
    """CLIP image features ``(E,)`` per image as a row model of the image-map engine
    (:mod:`neuromem.jobs.image_map`), with exactly the ``clip-probe`` encoder's preprocessing.

    Parameters
    ----------
    model : dict
        :class:`ClipModelSpec` fields.
    """

    clip_frames = 0

    def __init__(self, model: dict[str, Any]) -> None:
        import pyarrow as pa

        from neuromem.decoding.embeddings import EMBEDDING
        from neuromem.runtime.device import resolve_device

        self.device = resolve_device("auto")
        self.encoder = build_feature_encoder(ClipModelSpec(**model), self.device)
        self.input_size = self.encoder.input_size
        self.schema = pa.schema([(EMBEDDING, pa.list_(pa.float32(),
                                                      self.encoder.head.in_features))])

    def __call__(self, decoded):
        import pyarrow as pa

        from neuromem.data.batch import to_float_pixels

        features_be = image_features(self.encoder, to_float_pixels(decoded.pixels, self.device))
        width = self.schema.field(0).type.list_size
        flat = pa.array(features_be.reshape(-1), pa.float32())
        return pa.table([pa.FixedSizeListArray.from_arrays(flat, width)], schema=self.schema)
