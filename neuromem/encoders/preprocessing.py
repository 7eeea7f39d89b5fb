"""Differentiable image preprocessing shared by the encoders: resize, centre crop, normalise.

Every step is a torch operation, so gradients flow from an encoder's output back to the
pixels of images of any size. :class:`VideoPreprocessing` is the preprocessing of
transformers' V-JEPA2 video processor, step for step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

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


@dataclass(frozen=True)
class VideoPreprocessing:
    """transformers' V-JEPA2 video processor (``VJEPA2VideoProcessor``), step for step.

    The processor resizes each frame so that its shorter side is ``shortest_edge`` and its
    longer side ``int(shortest_edge · long / short)`` (torchvision ``resize``, antialiased, on
    the uint8 frame, so the result is rounded to uint8), crops the centre
    ``crop_size × crop_size`` square (offsets ``int((side - crop_size) / 2)``), then
    normalises in float32 with the mean and std scaled by 255 (its fused rescale and
    normalise). uint8 frames go through exactly these operations (on the CPU, where the
    processor runs); float frames in ``[0, 1]`` go through the same geometry without the uint8
    rounding, differentiably.

    Attributes
    ----------
    shortest_edge : int
        Shorter side after resizing, pixels.
    crop_size : int
        Side of the centre crop, pixels.
    mean, std : tuple of float
        Per-channel normalisation, for pixels in ``[0, 1]``.
    interpolation : torchvision.transforms.InterpolationMode
        Resampling filter.
    """

    shortest_edge: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: TF.InterpolationMode = TF.InterpolationMode.BILINEAR

    @classmethod
    def from_processor(cls, processor: Any) -> VideoPreprocessing:
        """Settings of a transformers video processor (``VJEPA2VideoProcessor``)."""
        from transformers.image_utils import pil_torch_interpolation_mapping

        steps = ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
        if not all(getattr(processor, step) for step in steps) or abs(
            processor.rescale_factor - 1 / 255
        ) > 1e-12:
            raise InputError(
                "the backbone's video processor must resize, crop, rescale by 1/255 and "
                f"normalise; its settings are {processor.to_dict()}"
            )
        return cls(
            shortest_edge=int(processor.size.shortest_edge),
            crop_size=int(processor.crop_size.height),
            mean=tuple(float(v) for v in processor.image_mean),
            std=tuple(float(v) for v in processor.image_std),
            interpolation=pil_torch_interpolation_mapping[processor.resample],
        )

    def resize_crop(self, frames_n3hw: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop frames ``(N, 3, H, W)`` (uint8 or float) to the crop size."""
        height, width = frames_n3hw.shape[-2:]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        new_hw = (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)
        if new_hw[0] < self.crop_size or new_hw[1] < self.crop_size:
            raise InputError(
                f"frames of {width}x{height} resize to {new_hw[1]}x{new_hw[0]}, smaller than the "
                f"{self.crop_size}-pixel crop"
            )
        device = frames_n3hw.device
        if frames_n3hw.dtype == torch.uint8:
            frames_n3hw = frames_n3hw.cpu()
        resized = TF.resize(frames_n3hw, list(new_hw), interpolation=self.interpolation,
                            antialias=True)
        top = int((new_hw[0] - self.crop_size) / 2.0)
        left = int((new_hw[1] - self.crop_size) / 2.0)
        cropped = resized[..., top : top + self.crop_size, left : left + self.crop_size]
        return cropped.to(device)

    def normalise(self, frames_n3hw: torch.Tensor) -> torch.Tensor:
        """float32 ``(x − 255·mean) / (255·std)`` of uint8 frames, or of ``255 · x`` for float."""
        pixels = frames_n3hw.to(torch.float32)
        if frames_n3hw.dtype != torch.uint8:
            pixels = pixels * 255
        mean_3 = torch.tensor(self.mean, device=pixels.device) * (1.0 / (1 / 255))
        std_3 = torch.tensor(self.std, device=pixels.device) * (1.0 / (1 / 255))
        return (pixels - mean_3[:, None, None]) / std_3[:, None, None]

    def __call__(self, frames_n3hw: torch.Tensor) -> torch.Tensor:
        """Resize, crop and normalise frames ``(N, 3, H, W)`` → float32 ``(N, 3, S, S)``."""
        return self.normalise(self.resize_crop(frames_n3hw))
