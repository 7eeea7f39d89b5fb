"""Upstream TRIBE v2 window timing: window times, moviepy's frame rules, reading an MP4."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from neuromem.encoders.tribe_video import (
    moviepy_duration,
    moviepy_fps,
    moviepy_frame_indices,
    output_steps,
    read_video_windows,
    window_times,
)
from neuromem.errors import InputError


def test_window_times_follow_upstream_formula():
    times_nf = window_times(1.5, 2.0, 4.0, 64)
    assert times_nf.shape == (3, 64)
    for k, end in enumerate((0.5, 1.0, 1.5)):
        expected = np.maximum(0, end - (63 - np.arange(64)) * 4 / 64)
        np.testing.assert_allclose(times_nf[k], expected, rtol=0, atol=1e-12)
    assert times_nf[0, 0] == 0 and times_nf[2, -1] == 1.5
    # no clip_duration: one feature step (0.5 s) per window; 2.2 s rounds to 4 steps
    spans = window_times(2.2, 2.0, None, 4)
    np.testing.assert_allclose(spans[:, -1], [0.55, 1.1, 1.65, 2.2])
    np.testing.assert_allclose(spans[:, -1] - spans[:, 0], 3 * 0.5 / 4)
    assert window_times(0.2, 2.0, 4.0, 64).shape == (0, 64)


def test_frame_rules_of_moviepy():
    # frame shown at t is int(fps*t + 1e-5), in any order
    assert moviepy_frame_indices(np.array([1.0, 0.0, 0.5, 0.5, 1 / 3]), 30.0, 90).tolist() == [
        30, 0, 15, 15, 10]
    # a time past the last frame returns the frame returned before: the last step of a 3-s,
    # 30-fps video asks 2.9375 s (frame 88) then 3.0 s (frame 90, absent): 88 again, not 89
    last_window = np.maximum(0, 3.0 - (63 - np.arange(64)) / 16)
    indices = moviepy_frame_indices(last_window, 30.0, 90)
    assert indices[-2:].tolist() == [88, 88]
    assert indices[0] == 0  # 3.0 - 63/16 s is before the start: clamped to frame 0
    # past the end as the very first request: the reader still holds frame 0
    assert moviepy_frame_indices(np.array([5.0]), 30.0, 90).tolist() == [0]
    with pytest.raises(InputError, match="no decodable frames"):
        moviepy_frame_indices(np.array([0.0]), 30.0, 0)


def test_frame_rate_and_duration_as_moviepy_reads_them():
    ntsc = 30 * (1000.0 / 1001.0)
    assert moviepy_fps(Fraction(30000, 1001)) == ntsc  # printed 29.97, corrected
    assert moviepy_fps(Fraction(24000, 1001)) == 24 * (1000.0 / 1001.0)
    assert moviepy_fps(Fraction(60000, 1001)) == 59.94  # 60 is not in moviepy's list
    assert moviepy_fps(16) == 16.0 and moviepy_fps(Fraction(25, 2)) == 12.5
    assert moviepy_fps(Fraction(1, 3)) == 0.33  # ffmpeg prints 2 decimals
    # ffmpeg prints the container duration rounded to 1/100 s
    assert moviepy_duration(3_003_000) == 3.0
    assert moviepy_duration(2_995_000) == 3.0
    assert moviepy_duration(3_004_999) == 3.0
    assert moviepy_duration(3_005_000) == 3.01
    assert moviepy_duration(3_170_000) == 3.17
    assert moviepy_duration(3_661_250_000) == 3661.25  # 01:01:01.25


def test_output_steps():
    assert [output_steps(d, 1.0) for d in (3.0, 3.04, 0.4, 12.0, 2.9999999)] == [3, 4, 1, 12, 3]


def _numbered_video(n_frames: int, fps: int) -> bytes:
    """H.264 whose frame ``i`` is uniformly grey at level ``5 * i``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv444p"
        stream.options = {"qp": "0"}
        for i in range(n_frames):
            pixels = np.full((16, 24, 3), 5 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def test_read_video_windows_keeps_each_used_frame_once():
    payload = _numbered_video(45, 30)  # 1.5 s: 3 windows ending at 0.5, 1.0, 1.5 s
    video = read_video_windows(payload, 2.0, 4.0, 64, transform=lambda f: round(f.mean() / 5))
    assert video.fps == 30.0 and video.duration == 1.5 and video.rows.shape == (3, 64)
    indices_nf = np.array(video.frames)[video.rows]  # frame numbers, read back from pixels
    assert video.frames == sorted(set(video.frames))  # each used frame kept once, in order
    expected_first = [int(30 * max(0.0, 0.5 - (63 - j) / 16) + 1e-5) for j in range(64)]
    assert indices_nf[0].tolist() == expected_first
    assert indices_nf[2, -2:].tolist() == [43, 43]  # 1.5 s is past frame 44: frame 43 again
    with pytest.raises(InputError, match="shorter than half a feature step"):
        read_video_windows(_numbered_video(6, 30), 2.0, 4.0, 64)
    with pytest.raises(InputError, match="cannot decode video"):
        read_video_windows(b"not a video at all", 2.0, 4.0, 64)
