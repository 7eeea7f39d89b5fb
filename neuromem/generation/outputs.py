"""What generation commands write: 8-bit images as measured, PNG files, ROI rows, versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Packages recorded in every generation command's output.
GENERATION_PACKAGES = ("diffusers", "transformers", "open_clip_torch", "peft")


def quantise(images_b3hw: torch.Tensor) -> torch.Tensor:
    """Round ``(B, 3, H, W)`` images in ``[0, 1]`` to 8 bits and back, so measured images equal
    the PNG files."""
    return (images_b3hw.clamp(0, 1) * 255).round() / 255


def save_png(image_3hw: torch.Tensor, path: str | Path) -> None:
    """Write one ``(3, H, W)`` image in ``[0, 1]`` as an 8-bit PNG (folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels_hw3 = (image_3hw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels_hw3).save(path)


def roi_rows(columns: list[str], roi_br: np.ndarray) -> list[dict[str, float]]:
    """``(B, R)`` ROI responses → one ``{column: value}`` dict per image."""
    return [dict(zip(columns, map(float, roi_r), strict=True)) for roi_r in roi_br]


def roi_means(columns: list[str], roi_br: np.ndarray) -> dict[str, float]:
    """``(B, R)`` ROI responses → ``{column: mean over images}``."""
    return dict(zip(columns, map(float, roi_br.mean(0)), strict=True))
