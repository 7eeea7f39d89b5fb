"""Turn payload bytes into uint8 RGB pixels: images (Pillow) and videos (PyAV).

Pure functions with no Ray: the scoring stage calls them on each row's ``payload``.

Conventions of :func:`decode_image`
-----------------------------------
- EXIF orientation is applied, so pixels are upright as a viewer shows them.
- CMYK and YCbCr become RGB; grayscale (``L``, ``1``) is repeated over the three channels.
- 16-bit images (``I;16*``, ``I``) are scaled to 8 bits by ``round(v * 255 / 65535)``, not
  clipped.
- Transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is
  composited on a white background.
- Images with more than :data:`MAX_PIXELS` pixels (width × height read from the header, before
  any pixel is decoded) are refused as decompression bombs (Pillow itself also refuses images
  above ``2 * PIL.Image.MAX_IMAGE_PIXELS``).
- ``size`` resizes the shorter side to ``size`` pixels (bilinear, antialiased) and crops the
  centre ``size × size`` square, the same geometry as
  :func:`neuromem.encoders.preprocessing.resize_center_crop`. JPEGs are decoded directly at a
  reduced scale (DCT scaling) when that still leaves the shorter side ≥ ``size``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from neuromem.data.schema import MEDIA_IMAGE, parse_array_media
from neuromem.errors import InputError

#: Largest accepted image, in pixels (width × height): 100 megapixels, about 300 MB of RGB.
MAX_PIXELS = 100_000_000

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(
    payload: bytes,
    media: str = MEDIA_IMAGE,
    size: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode one image payload to RGB pixels.

    Parameters
    ----------
    payload : bytes
        An encoded image file (JPEG, PNG, GIF, BMP, TIFF, WebP, ...) when ``media`` is
        ``"image"``, or raw C-ordered uint8 pixels when ``media`` is ``"array:{H}x{W}x3"``.
    media : str
        ``"image"`` or ``"array:{H}x{W}x3"``.
    size : int or None
        Output side in pixels (shorter-side resize then centre crop); ``None`` keeps the
        original size.
    max_pixels : int
        Images with more pixels than this raise :class:`InputError` before decoding.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(H, W, 3)`` (``(size, size, 3)`` when ``size`` is given).

    Raises
    ------
    InputError
        Not an image, truncated or corrupt data, too many pixels, or an unknown ``media``.
    """
    if size is not None and size < 1:
        raise InputError(f"size must be a positive number of pixels, got {size}")
    array_hw = parse_array_media(media)
    if array_hw is not None:
        return _decode_array(payload, array_hw, size)
    if media != MEDIA_IMAGE:
        raise InputError(f"decode_image expects media 'image' or 'array:HxWx3', got {media!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels "
                    "(possible decompression bomb)"
                )
            if size is not None and image.format == "JPEG":
                image.draft(image.mode, (size, size))
            image = ImageOps.exif_transpose(image)  # loads the pixels
            rgb = _to_rgb(image)
    except InputError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own, larger, limit
        raise InputError(f"image exceeds the limit of {max_pixels} pixels: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot decode image ({len(payload)} bytes): {reason}") from None
    return np.asarray(_resize_crop(rgb, size) if size is not None else rgb, dtype=np.uint8)


def decode_video(
    payload: bytes, n_frames: int, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``n_frames`` frames sampled uniformly over a video clip.

    Frame ``k`` is the frame on screen at time ``start + (k + 0.5) * duration / n_frames``
    (the centres of ``n_frames`` equal slices of the clip). When the container does not
    report a duration, all frames are decoded and ``n_frames`` evenly spaced ones are kept.

    Parameters
    ----------
    payload : bytes
        An encoded video file (MP4, WebM, ...).
    n_frames : int
        Number of frames to return (≥ 1). Frames repeat when the clip has fewer.
    size : int or None
        Output side in pixels (shorter-side resize then centre crop), ``None`` for native.

    Returns
    -------
    frames_thw3 : numpy.ndarray
        uint8, shape ``(n_frames, H, W, 3)``.
    times_t : numpy.ndarray
        float64, shape ``(n_frames,)``: presentation time of each returned frame in seconds.

    Raises
    ------
    InputError
        Not a video, no video stream, or no decodable frame.
    """
    import av  # PyAV is heavy; import it only for videos

    if n_frames < 1:
        raise InputError(f"n_frames must be at least 1, got {n_frames}")
    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            if not container.streams.video:
                raise InputError("video payload has no video stream")
            stream = container.streams.video[0]
            start, duration = _start_and_duration(container, stream)
            rate = float(stream.average_rate or stream.guessed_rate or 1)
            decoded = _sample_frames(_frames(container, stream), n_frames, start, duration, rate)
    except InputError:
        raise
    except av.error.EOFError:  # a container that ends before its first frame
        decoded = []
    except (av.error.FFmpegError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot decode video ({len(payload)} bytes): {reason}") from None
    if not decoded:
        raise InputError("video has no decodable frames")
    times_t = np.array([t for t, _ in decoded], dtype=np.float64)
    frames = [
        np.asarray(_resize_crop(image, size) if size is not None else image, dtype=np.uint8)
        for _, image in decoded
    ]
    return np.stack(frames), times_t


def _decode_array(payload: bytes, array_hw: tuple[int, int], size: int | None) -> np.ndarray:
    height, width = array_hw
    if len(payload) != height * width * 3:
        raise InputError(
            f"raw pixel payload has {len(payload)} bytes, expected {height}*{width}*3 = "
            f"{height * width * 3}"
        )
    pixels_hw3 = np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)
    if size is None:
        return pixels_hw3.copy()
    return np.asarray(_resize_crop(Image.fromarray(pixels_hw3), size), dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        gray = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    if image.mode == "F":
        raise InputError("floating-point images are not supported; save them as 8- or 16-bit")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def _start_and_duration(container, stream) -> tuple[float, float | None]:
    """Start time and duration of a video stream in seconds (duration ``None`` if unknown)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration is not None and stream.duration > 0:
        return start, float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return start, container.duration / 1_000_000  # container.duration is in microseconds
    return start, None


def _frames(container, stream):
    """Decoded frames of ``stream``; a premature end of file ends the clip."""
    import av

    try:
        yield from container.decode(stream)
    except av.error.EOFError:
        return


def _sample_frames(frames, n_frames: int, start: float, duration: float | None, rate: float):
    """Pick ``n_frames`` (time, PIL image) pairs uniformly in time from a frame iterator."""
    if duration is None:
        every = [(_frame_time(f, i, rate), f) for i, f in enumerate(frames)]
        picks = np.floor((np.arange(n_frames) + 0.5) * len(every) / n_frames).astype(int)
        chosen = [every[i] for i in picks] if every else []
    else:
        targets = start + (np.arange(n_frames) + 0.5) * duration / n_frames
        chosen = []
        previous = None
        for index, frame in enumerate(frames):
            current = (_frame_time(frame, index, rate), frame)
            while len(chosen) < n_frames and current[0] > targets[len(chosen)] + 1e-9:
                chosen.append(previous if previous is not None else current)
            if len(chosen) == n_frames:
                break
            previous = current
        if previous is not None:
            chosen.extend([previous] * (n_frames - len(chosen)))
    return [(time, frame.to_image()) for time, frame in chosen]


def _frame_time(frame, index: int, rate: float) -> float:
    """Presentation time in seconds; frames without a timestamp use ``index / rate``."""
    return float(frame.time) if frame.time is not None else index / rate
