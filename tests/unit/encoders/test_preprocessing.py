"""V-JEPA2 video preprocessing against transformers' own video processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import VJEPA2VideoProcessor

from neuromem.encoders.preprocessing import VideoPreprocessing
from neuromem.errors import InputError


@pytest.mark.parametrize("height, width", [(40, 57), (61, 38), (32, 32)])
def test_uint8_frames_match_the_processor_exactly(height, width):
    processor = VJEPA2VideoProcessor(crop_size=32)
    preprocessing = VideoPreprocessing.from_processor(processor)
    assert (preprocessing.shortest_edge, preprocessing.crop_size) == (36, 32)
    frames_thw3 = np.random.default_rng(height).integers(0, 256, (5, height, width, 3), np.uint8)
    expected = processor(videos=list(frames_thw3), return_tensors="pt")["pixel_values_videos"][0]
    frames_t3hw = torch.from_numpy(frames_thw3).permute(0, 3, 1, 2)
    assert torch.equal(preprocessing(frames_t3hw), expected)
    # float frames: the same geometry without the uint8 rounding of the resize, differentiably
    floats = (frames_t3hw.float() / 255).requires_grad_(True)
    result = preprocessing(floats)
    torch.testing.assert_close(result, expected, atol=2 / 255 / 0.224, rtol=0)
    result.sum().backward()
    assert floats.grad.abs().sum() > 0


def test_processor_settings_are_read_and_checked():
    processor = VJEPA2VideoProcessor(crop_size=64, image_mean=[0.5, 0.5, 0.5])
    preprocessing = VideoPreprocessing.from_processor(processor)
    assert preprocessing.shortest_edge == int(64 * 256 / 224) and preprocessing.mean == (0.5,) * 3
    with pytest.raises(InputError, match="must resize, crop"):
        VideoPreprocessing.from_processor(VJEPA2VideoProcessor(crop_size=32, do_center_crop=False))
    small = VideoPreprocessing(20, 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(InputError, match="smaller than the 32-pixel crop"):
        small(torch.zeros(1, 3, 40, 40, dtype=torch.uint8))
