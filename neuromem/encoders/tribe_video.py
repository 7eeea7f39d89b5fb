"""Which frames feed each TRIBE v2 feature step, chosen exactly as upstream chooses them.

Upstream TRIBE v2 computes its video features with neuralset's ``HuggingFaceVideo`` extractor
(``neuralset/extractors/video.py``, settings in ``tribev2/grids/defaults.py``): for a video of
duration ``D`` seconds and a feature rate ``f`` (2 Hz), it makes ``N = round(D · f)`` feature
steps. Step ``k`` ends at ``t_k = D · (k + 1) / N`` (``numpy.linspace(0, D, N + 1)[1:]``) and
its feature is computed from a clip of ``F`` frames (64 for V-JEPA2) read at the times
``max(0, t_k − j / F · T)`` for ``j = F − 1, …, 0``, where ``T`` is ``clip_duration`` (4 s):
the frames spread over the 4 s preceding the end of the step, times before the start of the
video clamped to 0. This module reproduces those times and the frames they return.

Frames are read by moviepy 2 (``VideoFileClip.get_frame``), whose rules decide which frame a
time gives; :func:`moviepy_frame_indices` reproduces them:

- the frame shown at ``t`` is frame ``int(fps · t + 1e-5)`` of the decoded stream (frames are
  taken to start at 0 and follow each other every ``1 / fps`` s, as moviepy assumes);
- a time past the last decoded frame returns the frame the reader returned before (moviepy
  keeps its last frame when ffmpeg has no more), which is not always the last frame: at 30 fps
  the last step of a 3 s video asks for frame 90, skips frame 89 and gets frame 88 again;
- ``fps`` is the stream's average frame rate as ffmpeg prints it (2 decimals), with moviepy's
  correction of 23.98, 24.98, 29.97, 49.95 to ``x · 1000 / 1001``; ``D`` is the container
  duration as ffmpeg prints it (rounded to 1/100 s).

Pixels are decoded here by PyAV (``rgb24``); upstream's moviepy pipes them from an ffmpeg
binary. Checked against moviepy 2.2.1 with the ffmpeg of imageio-ffmpeg 0.8.1 on H.264 files
(8 to 60 fps, 29.97 and 23.976 included, BT.601 and BT.709): the same frame for every window
time, the same pixels, and upstream's extractor gave features equal to ours bit for bit. Not
reproduced: rotation metadata, which ffmpeg applies and PyAV does not, and variable frame rate
streams, whose frames moviepy also assumes evenly spaced.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from neuromem.errors import InputError

#: moviepy's rounding guard when turning a time into a frame number.
FRAME_EPSILON = 0.00001


def feature_step_ends(duration: float, frequency: float) -> np.ndarray:
    """End time ``t_k`` of each feature step of a video, s (upstream's ``linspace``).

    Parameters
    ----------
    duration : float
        Video duration, s.
    frequency : float
        Feature rate, Hz.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N,)`` with ``N = round(duration · frequency)``.
    """
    n_steps = int(round(duration * frequency))
    return np.linspace(0, duration, n_steps + 1)[1:]


def window_times(
    duration: float, frequency: float, clip_duration: float | None, num_frames: int
) -> np.ndarray:
    """Times of the frames of every feature window, in the order upstream reads them, s.

    Parameters
    ----------
    duration : float
        Video duration, s.
    frequency : float
        Feature rate, Hz.
    clip_duration : float or None
        Span of a window, s (None: one feature step, ``1 / frequency``, as upstream).
    num_frames : int
        Frames per window.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N, num_frames)``, ascending within each window.
    """
    span = 1 / frequency if clip_duration is None else clip_duration
    # upstream: subtimes = [k / num_frames * T for k in reversed(range(num_frames))]
    offsets_f = np.array([k / num_frames * span for k in reversed(range(num_frames))])
    ends_n = feature_step_ends(duration, frequency)
    return np.maximum(0, ends_n[:, None] - offsets_f[None, :])


def moviepy_frame_indices(times: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """Frame index moviepy 2 returns for each time, the times asked one after the other.

    The reader opens on frame 0. A time ``t`` names frame ``i = int(fps · t + 1e-5)``: if the
    reader stands on ``i`` already it returns its last frame; otherwise it moves there and reads
    frame ``i`` if the stream has it, and returns its last frame unchanged if not.

    Parameters
    ----------
    times : numpy.ndarray
        Times in the order they are asked, s, any shape.
    fps : float
        Frame rate as moviepy reads it (:func:`moviepy_fps`).
    n_frames : int
        Frames the stream decodes to (≥ 1).

    Returns
    -------
    numpy.ndarray
        int64 frame indices in ``0..n_frames - 1``, shape of ``times``.
    """
    if n_frames < 1:
        raise InputError("video has no decodable frames")
    flat = np.asarray(times, dtype=np.float64).ravel()
    indices = np.empty(flat.shape, dtype=np.int64)
    last, position = 0, 1  # moviepy reads frame 0 when it opens the file
    for n, time in enumerate(flat):
        target = int(fps * float(time) + FRAME_EPSILON) + 1
        if target != position:
            if target - 1 < n_frames:
                last = target - 1
            position = target
        indices[n] = last
    return indices.reshape(np.shape(times))


def window_frame_indices(
    n_frames: int,
    fps: float,
    duration: float,
    frequency: float,
    clip_duration: float | None,
    num_frames: int,
) -> np.ndarray:
    """Index of every frame of every feature window of a video, ``(N, num_frames)`` int64."""
    times_nf = window_times(duration, frequency, clip_duration, num_frames)
    if times_nf.shape[0] == 0:
        raise InputError(
            f"video of {duration:g} s is shorter than half a feature step ({0.5 / frequency:g} s)"
        )
    return moviepy_frame_indices(times_nf, fps, n_frames)


def ffmpeg_fps_text(rate: float) -> str:
    """A frame rate as ffmpeg prints it in a stream description (``print_fps``)."""
    hundredths = int(np.rint(np.float32(rate * 100)))
    if not hundredths:
        return f"{rate:1.4f}"
    if hundredths % 100:
        return f"{rate:3.2f}"
    if hundredths % (100 * 1000):
        return f"{rate:1.0f}"
    raise InputError(f"frame rate {rate:g} fps is not supported (1000 fps or more)")


def moviepy_fps(rate: Fraction | float) -> float:
    """The frame rate moviepy 2 reads from ffmpeg's description of a stream.

    ffmpeg prints the average frame rate with 2 decimals; moviepy parses that text and replaces
    a rate within 0.01 of ``x · 1000 / 1001`` (``x`` in 23, 24, 25, 30, 50) by that value.
    """
    fps = float(ffmpeg_fps_text(float(rate)))
    coef = 1000.0 / 1001.0
    for x in [23, 24, 25, 30, 50]:
        if (fps != x) and abs(fps - x * coef) < 0.01:
            fps = x * coef
    return fps


def moviepy_duration(duration_us: int) -> float:
    """The duration moviepy 2 reads from ffmpeg's ``Duration: HH:MM:SS.cc`` line, s.

    Parameters
    ----------
    duration_us : int
        Container duration in microseconds (``AVFormatContext.duration``).
    """
    rounded = int(duration_us) + 5000  # ffmpeg rounds to the nearest 1/100 s
    seconds, micro = divmod(rounded, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}.{(100 * micro) // 1_000_000:02d}"
    parts = [float(part) for part in text.split(":")]
    return sum(mult * part for mult, part in zip((1, 60, 3600), reversed(parts), strict=True))


@dataclass
class VideoWindows:
    """The frames of a video that feed its feature windows, each stored once.

    Attributes
    ----------
    frames : list
        The distinct frames used, in stream order (uint8 ``(H, W, 3)`` arrays, or what the
        ``transform`` of :func:`read_video_windows` made of them).
    rows : numpy.ndarray
        int64 ``(N, num_frames)``: for each feature window, the position in ``frames`` of each
        of its frames.
    fps : float
        Frame rate as moviepy reads it.
    duration : float
        Duration as moviepy reads it, s.
    n_frames : int
        Frames decoded (reading stops after the last frame a window uses).
    """

    frames: list[Any]
    rows: np.ndarray
    fps: float
    duration: float
    n_frames: int


def read_video_windows(
    payload: bytes,
    frequency: float,
    clip_duration: float | None,
    num_frames: int,
    transform: Callable[[np.ndarray], Any] | None = None,
) -> VideoWindows:
    """Decode the frames a video's feature windows use (each once), with upstream's timing.

    Frames no window uses are decoded but not kept; the stream is read only up to the last
    frame a window asks for.

    Parameters
    ----------
    payload : bytes
        An encoded video file.
    frequency, clip_duration, num_frames
        Feature rate (Hz), window span (s) and frames per window.
    transform : callable or None
        Applied to each kept ``(H, W, 3)`` uint8 frame as it is decoded (e.g. the resize and
        crop of the backbone's preprocessing, so full-size frames are not held).

    Raises
    ------
    InputError
        Not a video, no video stream, no duration, no decodable frame, or shorter than half a
        feature step.
    """
    import av

    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            if not container.streams.video:
                raise InputError("video payload has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate
            if not rate or container.duration is None:
                raise InputError("video has no frame rate or no duration in its container")
            fps, duration = moviepy_fps(rate), moviepy_duration(container.duration)
            times_nf = window_times(duration, frequency, clip_duration, num_frames)
            if times_nf.shape[0] == 0:
                raise InputError(
                    f"video of {duration:g} s is shorter than half a feature step "
                    f"({0.5 / frequency:g} s)"
                )
            wanted = {0} | {int(fps * float(t) + FRAME_EPSILON) for t in times_nf.ravel()}
            kept: dict[int, Any] = {}
            n_frames = 0
            for frame in _decoded(container, stream):
                if n_frames in wanted:
                    pixels_hw3 = frame.to_ndarray(format="rgb24")
                    kept[n_frames] = transform(pixels_hw3) if transform else pixels_hw3
                n_frames += 1
                if n_frames > max(wanted):
                    break
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot decode video ({len(payload)} bytes): {reason}") from None
    indices_nf = moviepy_frame_indices(times_nf, fps, n_frames)
    order = sorted(set(indices_nf.ravel().tolist()))
    position = {index: p for p, index in enumerate(order)}
    rows_nf = np.vectorize(position.__getitem__, otypes=[np.int64])(indices_nf)
    return VideoWindows([kept[i] for i in order], rows_nf, fps, duration, n_frames)


def _decoded(container, stream):
    """Decoded frames in presentation order; a premature end of file ends the stream."""
    import av

    try:
        yield from container.decode(stream)
    except av.error.EOFError:
        return


def output_steps(duration: float, output_frequency: float) -> int:
    """Number of fMRI steps upstream keeps for a stimulus of ``duration`` s (those it overlaps)."""
    return max(1, math.ceil(round(duration * output_frequency, 6)))
