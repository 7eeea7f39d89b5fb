"""Gaussian blur of gradients and the high-frequency energy measure."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from neuromem.errors import InputError
from neuromem.generation.blur import gaussian_blur, high_frequency_ratio


def _noise(shape=(2, 3, 32, 40), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sigma_zero_is_identity_and_small_sigma_tends_to_it():
    grad_bchw = _noise()
    assert torch.equal(gaussian_blur(grad_bchw, 0.0), grad_bchw)
    # the kernel's off-centre taps are exp(-200) at sigma 0.05: the identity in float64 terms
    torch.testing.assert_close(gaussian_blur(grad_bchw, 0.05), grad_bchw, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_matches_scipy_gaussian_filter(sigma):
    grad_bchw = _noise()
    # torch "reflect" padding (edge not repeated) is scipy's "mirror" mode
    expected = scipy.ndimage.gaussian_filter(
        grad_bchw.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0
    )
    np.testing.assert_allclose(gaussian_blur(grad_bchw, sigma).numpy(), expected, atol=1e-12)


def test_blur_keeps_constants_and_is_differentiable():
    constant = torch.full((1, 2, 16, 16), 3.5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 1.5), constant)
    x = _noise((1, 1, 16, 16)).requires_grad_(True)
    gaussian_blur(x, 1.0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_blur_lowers_high_frequency_energy_monotonically():
    grad_bchw = _noise((4, 3, 64, 64))
    ratios = [high_frequency_ratio(gaussian_blur(grad_bchw, s)) for s in (0.0, 0.5, 1.0, 2.0)]
    # white noise: the band above 0.25 cycles/pixel holds 1 - pi/16 of the energy
    np.testing.assert_allclose(ratios[0].numpy(), 1 - np.pi / 16, atol=0.03)
    for before, after in zip(ratios, ratios[1:], strict=False):
        assert (after < before).all()
    assert (ratios[-1] < 0.05).all()  # what is left is the periodic-wrap edge of the FFT


def test_high_frequency_ratio_of_pure_tones():
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    low = torch.tensor(np.cos(2 * np.pi * 4 / 64 * cols))[None, None]  # 0.0625 cycles/pixel
    high = torch.tensor(np.cos(2 * np.pi * 24 / 64 * rows))[None, None]  # 0.375 cycles/pixel
    assert high_frequency_ratio(low).item() == pytest.approx(0.0, abs=1e-9)
    assert high_frequency_ratio(high).item() == pytest.approx(1.0, abs=1e-9)
    assert high_frequency_ratio(torch.ones(1, 3, 8, 8)).item() == 0.0


def test_bad_sigma_and_shapes_raise():
    with pytest.raises(InputError, match=">= 0"):
        gaussian_blur(_noise(), -1.0)
    with pytest.raises(InputError, match="too large"):
        gaussian_blur(_noise((1, 1, 8, 8)), 5.0)
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        gaussian_blur(torch.zeros(3, 8, 8), 1.0)
