"""Gaussian blur of image-shaped gradients, and a measure of their high-frequency energy.

The blur is a separable convolution with a normalised Gaussian kernel truncated at 3σ and
reflect padding, so a constant image is left unchanged. σ = 0 is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neuromem.errors import InputError

TRUNCATE_SIGMAS = 3.0


def gaussian_kernel_1d(sigma: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` pixels, radius ``ceil(3σ)``.

    Returns
    -------
    torch.Tensor
        ``kernel_k``, shape ``(2 * radius + 1,)``, summing to 1.
    """
    radius = max(1, math.ceil(TRUNCATE_SIGMAS * sigma))
    offsets_k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel_k = torch.exp(-0.5 * (offsets_k / sigma) ** 2)
    return (kernel_k / kernel_k.sum()).to(dtype)


def gaussian_blur(images_bchw: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel with a separable Gaussian of ``sigma`` pixels (reflect padding).

    Parameters
    ----------
    images_bchw : torch.Tensor
        Shape ``(B, C, H, W)``; differentiable.
    sigma : float
        Standard deviation in pixels, ``>= 0``; 0 returns the input unchanged.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``images_bchw``.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise InputError(f"blur sigma must be a finite number >= 0 pixels, got {sigma}")
    if images_bchw.ndim != 4:
        raise InputError(f"expected a (B, C, H, W) tensor, got shape {tuple(images_bchw.shape)}")
    if sigma == 0:
        return images_bchw
    batch, channels, height, width = images_bchw.shape
    kernel_k = gaussian_kernel_1d(sigma, dtype=images_bchw.dtype, device=images_bchw.device)
    radius = kernel_k.numel() // 2
    if radius >= min(height, width):
        raise InputError(
            f"blur sigma {sigma} needs a {2 * radius + 1}-pixel kernel, too large for "
            f"{height}x{width} images (reflect padding needs radius < side)"
        )
    planes = images_bchw.reshape(batch * channels, 1, height, width)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"),
                      kernel_k.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"),
                      kernel_k.view(1, 1, -1, 1))
    return planes.reshape(batch, channels, height, width)


def high_frequency_ratio(images_bchw: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Fraction of each image's spectral energy above a radial frequency ``cutoff``.

    Parameters
    ----------
    images_bchw : torch.Tensor
        Shape ``(B, C, H, W)``; the per-channel mean is removed first.
    cutoff : float
        Radial frequency in cycles per pixel (Nyquist is 0.5).

    Returns
    -------
    torch.Tensor
        ``ratio_b``, shape ``(B,)``, in ``[0, 1]`` (0 for a constant image).
    """
    if not 0 < cutoff < 0.5:
        raise InputError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    x_bchw = images_bchw.detach().double()
    x_bchw = x_bchw - x_bchw.mean(dim=(-2, -1), keepdim=True)
    power_bchw = torch.fft.fft2(x_bchw).abs() ** 2
    fy = torch.fft.fftfreq(x_bchw.shape[-2], dtype=torch.float64, device=x_bchw.device)
    fx = torch.fft.fftfreq(x_bchw.shape[-1], dtype=torch.float64, device=x_bchw.device)
    high_hw = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() > cutoff
    total_b = power_bchw.sum(dim=(1, 2, 3))
    high_b = (power_bchw * high_hw).sum(dim=(1, 2, 3))
    return torch.where(total_b > 0, high_b / total_b.clamp_min(1e-300), 0.0).float()
