"""Still-image protocols: the windows each one shows the backbone, checked by hand formulas."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.encoders.tribe_protocols import GREY, IMAGE, PROTOCOLS, StillProtocol
from neuromem.errors import InputError, UnknownNameError


def test_paper_windows():
    plan = StillProtocol("paper").plan(frequency=2.0, clip_duration=4.0, num_frames=64,
                                       output_frequency=1.0)
    # 4 s grey + 1 s image + 7 s grey at 16 fps: frames 64..79 are the image, 192 frames
    assert plan.duration == 12.0 and plan.rows.shape == (24, 64)
    for k in range(24):
        # window k ends at (k + 1) / 2 s; its frame j is at 8(k+1) - 63 + j (clamped to 0);
        # frame 192 does not exist: the reader returns frame 191 (grey) again
        frames = np.clip(8 * (k + 1) - 63 + np.arange(64), 0, 191)
        expected = np.where((frames >= 64) & (frames < 80), IMAGE, GREY)
        assert plan.rows[k].tolist() == expected.tolist(), k
    holds_image = (plan.rows == IMAGE).any(axis=1)
    assert holds_image.sum() == 10 and holds_image[7:17].all()  # windows ending 4.0 .. 8.5 s
    assert len(np.unique(plan.rows[holds_image], axis=0)) == 10
    assert plan.read == slice(4, 5) and plan.uses_grey  # the 1-s step starting at onset


def test_static_and_fast_windows():
    static = StillProtocol("static").plan(2.0, 4.0, 64, 1.0)
    assert static.rows.shape == (6, 64) and (static.rows == IMAGE).all()
    assert static.duration == 3.0 and static.read == slice(0, 3) and not static.uses_grey
    fast = StillProtocol("fast").plan(2.0, 4.0, 64, 1.0)
    assert fast.rows.shape == (6, 2) and (fast.rows == IMAGE).all() and fast.read == slice(0, 3)


def test_settings_and_errors():
    assert StillProtocol("paper").to_dict() == {
        "name": "paper", "fps": 16.0, "image_seconds": 1.0, "trial_seconds": 8.0,
        "lead_seconds": 4.0, "read_seconds": (0.0, 1.0), "grey_level": 128}
    assert StillProtocol("fast").to_dict() == {"name": "fast", "present_seconds": 3.0,
                                               "fast_frames": 2}
    assert PROTOCOLS[0] == "paper"
    with pytest.raises(UnknownNameError, match="paper, static, fast"):
        StillProtocol("movie")
    with pytest.raises(InputError, match="read_seconds"):
        StillProtocol("paper", read_seconds=(2.0, 1.0))
    with pytest.raises(InputError, match="grey_level"):
        StillProtocol("paper", grey_level=300)
    with pytest.raises(InputError, match="shorter than half a feature step"):
        StillProtocol("static", present_seconds=0.2).plan(2.0, 4.0, 64, 1.0)
