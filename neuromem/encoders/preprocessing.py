"""Differentiable image preprocessing shared by the encoders: resize, centre crop, normalise.

Every step is a torch operation, so gradients flow from an encoder's output back to the
pixels of images of any size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from neuromem.errors import InputError


def check_images(images_b3hw: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``images_b3hw`` is a float ``(B, 3, H, W)`` tensor."""
    if images_b3hw.ndim != 4 or images_b3hw.shape[1] != 3:
        raise InputError(
            f"expected images of shape (B, 3, H, W), got {tuple(images_b3hw.shape)}"
        )
    if not images_b3hw.is_floating_point():
        raise InputError(
            f"expected float images in [0, 1], got dtype {images_b3hw.dtype}; divide uint8 by 255"
        )


def check_clips(clips_bt3hw: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``clips_bt3hw`` is a float ``(B, T, 3, H, W)`` tensor."""
    if clips_bt3hw.ndim != 5 or clips_bt3hw.shape[2] != 3:
        raise InputError(
            f"expected clips of shape (B, T, 3, H, W), got {tuple(clips_bt3hw.shape)}"
        )
    if not clips_bt3hw.is_floating_point():
        raise InputError(
            f"expected float clips in [0, 1], got dtype {clips_bt3hw.dtype}; divide uint8 by 255"
        )


def resize_center_crop(
    images_b3hw: torch.Tensor, size: int, resize_to: int | None = None
) -> torch.Tensor:
    """Resize the shorter side to ``resize_to`` (bilinear, antialiased), crop the centre square.

    Parameters
    ----------
    images_b3hw : torch.Tensor
        Float images, shape ``(B, 3, H, W)``.
    size : int
        Output side in pixels.
    resize_to : int or None
        Shorter side after resizing, ``>= size``; None: ``size``.

    Returns
    -------
    torch.Tensor
        Shape ``(B, 3, size, size)``; differentiable with respect to ``images_b3hw``.
    """
    resize_to = size if resize_to is None else resize_to
    height, width = images_b3hw.shape[-2:]
    if (height, width) != (size, size):
        scale = resize_to / min(height, width)
        new_hw = (max(resize_to, round(height * scale)), max(resize_to, round(width * scale)))
        images_b3hw = F.interpolate(
            images_b3hw, size=new_hw, mode="bilinear", antialias=True, align_corners=False
        )
        top = (new_hw[0] - size) // 2
        left = (new_hw[1] - size) // 2
        images_b3hw = images_b3hw[..., top : top + size, left : left + size]
    return images_b3hw


def normalise(
    images_b3hw: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Subtract the per-channel ``mean`` and divide by ``std`` (both length 3)."""
    mean_3 = torch.as_tensor(mean, dtype=images_b3hw.dtype, device=images_b3hw.device)
    std_3 = torch.as_tensor(std, dtype=images_b3hw.dtype, device=images_b3hw.device)
    return (images_b3hw - mean_3[:, None, None]) / std_3[:, None, None]
