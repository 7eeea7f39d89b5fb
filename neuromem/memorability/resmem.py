"""ResMem (Needell & Bainbridge 2022) as an offline memorability assessor.

The PyPI package ``resmem`` ships its trained weights inside the wheel, so
``ResMem(pretrained=True)`` needs no network. Its preprocessing is Resize(256, 256) →
CenterCrop(227) → ToTensor, with no normalisation; the output is a sigmoid, a memorability
score in [0, 1].
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from neuromem.data.batch import DecodedBatch
from neuromem.encoders.preprocessing import check_images
from neuromem.errors import InputError, MissingWeightsError

RESIZE = 256
CROP = 227


def _load_resmem() -> torch.nn.Module:
    try:
        from resmem import ResMem
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingWeightsError(
            "the ResMem assessor needs the 'resmem' package (weights ship in its wheel): "
            "pip install 'neuromem[assess]'"
        ) from exc
    with warnings.catch_warnings():  # torchvision's notice about resnet152(pretrained=False)
        warnings.simplefilter("ignore", UserWarning)
        return ResMem(pretrained=True).eval()


class ResMemAssessor:
    """Score images with the pretrained ResMem model.

    Parameters
    ----------
    device : str or torch.device
        Where the model runs (``"cpu"``, ``"cuda"``...).
    model : torch.nn.Module or None
        An already loaded ``resmem.ResMem(pretrained=True)`` to share; ``None`` loads one.

    Notes
    -----
    Two entry points share the model:

    - :meth:`score_pixels` takes decoded uint8 pixels and applies ``resmem.transformer`` itself
      (PIL resize), so its scores are those of the ``resmem`` package on the same image;
    - :meth:`score` takes float tensors already in memory (e.g. generated images) and resizes
      them with torch (bilinear, antialiased), which differs from PIL by at most one grey
      level per pixel.

    Scores are computed without gradients: ResMem is an assessor, not a reward.
    """

    def __init__(
        self, device: str | torch.device = "cpu", model: torch.nn.Module | None = None
    ) -> None:
        self.device = torch.device(device)
        self.model = (model if model is not None else _load_resmem()).eval().to(self.device)

    @staticmethod
    def provenance() -> dict[str, str]:
        """Name and version of the assessor, for a table's metadata."""
        return {"assessor": "resmem", "resmem_version": importlib.metadata.version("resmem")}

    @torch.no_grad()
    def score(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Memorability of float images.

        Parameters
        ----------
        images_b3hw : torch.Tensor
            Float images in [0, 1], shape ``(B, 3, H, W)``, any size.

        Returns
        -------
        torch.Tensor
            Shape ``(B,)``, float32 in [0, 1], on the input's device.
        """
        check_images(images_b3hw)
        resized_b3hw = F.interpolate(
            images_b3hw.to(self.device, torch.float32),
            size=(RESIZE, RESIZE),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        top = (RESIZE - CROP) // 2  # torchvision's CenterCrop rounds the same way
        cropped_b3hw = resized_b3hw[..., top : top + CROP, top : top + CROP]
        return self._forward(cropped_b3hw).to(images_b3hw.device)

    @torch.no_grad()
    def score_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Memorability of decoded images, preprocessed exactly as the ``resmem`` package does.

        Parameters
        ----------
        pixels : sequence of numpy.ndarray
            uint8 RGB images, each ``(H, W, 3)``; sizes may differ.

        Returns
        -------
        numpy.ndarray
            Shape ``(B,)``, float32 in [0, 1].
        """
        from PIL import Image
        from resmem import transformer

        if len(pixels) == 0:
            return np.zeros(0, dtype=np.float32)
        tensors = []
        for image_hw3 in pixels:
            if image_hw3.dtype != np.uint8 or image_hw3.ndim != 3 or image_hw3.shape[2] != 3:
                raise InputError(
                    f"expected uint8 RGB pixels of shape (H, W, 3), got {image_hw3.dtype} "
                    f"{image_hw3.shape}"
                )
            tensors.append(transformer(Image.fromarray(image_hw3)))
        cropped_b3hw = torch.stack(tensors).to(self.device)
        return self._forward(cropped_b3hw).cpu().numpy()

    def _forward(self, cropped_b3hw: torch.Tensor) -> torch.Tensor:
        return self.model(cropped_b3hw).reshape(-1).float()


class ResMemRows:
    """The image-map engine's model of ResMem: ``memorability_resmem`` per image (native size)."""

    input_size = None  # ResMem resizes the full decoded image itself
    clip_frames = 0
    schema = pa.schema([("memorability_resmem", pa.float32())])

    def __init__(self) -> None:
        from neuromem.runtime.device import resolve_device

        self.device = resolve_device("auto")
        self.assessor = ResMemAssessor(self.device)

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """ResMem scores of the decoded images (a list of ``(H, W, 3)`` uint8 arrays)."""
        scores = self.assessor.score_pixels(list(decoded.pixels))
        return pa.table([pa.array(scores, pa.float32())], schema=self.schema)


def build_resmem_rows() -> ResMemRows:
    """Model recipe of the engine: :class:`ResMemRows`."""
    return ResMemRows()
