"""neuromem.data.decode on real files written in tmp_path: odd modes, bad inputs, videos."""

from __future__ import annotations

import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from neuromem.data import synthetic
from neuromem.data.decode import MAX_PIXELS, decode_image, decode_video
from neuromem.errors import InputError


def _save(tmp_path, name, image: Image.Image, **kwargs) -> bytes:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path.read_bytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_16bit_rgb(pixels_hw3: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write this mode)."""
    height, width, _ = pixels_hw3.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels_hw3)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def two_colour_rgb():
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:16] = (200, 30, 60)
    pixels[16:] = (20, 180, 90)
    return pixels


def test_cmyk_jpeg_becomes_rgb(tmp_path, two_colour_rgb):
    payload = _save(
        tmp_path, "cmyk.jpg", Image.fromarray(two_colour_rgb).convert("CMYK"), quality=95
    )
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    decoded = decode_image(payload)
    assert decoded.shape == (32, 48, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - two_colour_rgb).mean() < 3


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    gray_hw = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    payload = _save(tmp_path, "gray16.png", Image.fromarray(gray_hw))
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    decoded = decode_image(payload)
    expected = np.rint(gray_hw / 257.0)
    assert np.abs(decoded[..., 0].astype(int) - expected).max() <= 1
    assert (decoded[..., 0] == decoded[..., 2]).all()
    assert 100 < decoded[32, 0, 0] < 155  # mid-grey stays mid-grey (clipping would give 255)

    rgb_hw3 = np.random.default_rng(0).integers(0, 65536, (16, 16, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png_16bit_rgb(rgb_hw3))
    decoded = decode_image((tmp_path / "rgb16.png").read_bytes())
    assert np.abs(decoded.astype(int) - np.rint(rgb_hw3 / 257.0)).max() <= 1


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 0  # top: fully transparent
    rgba[2:, :, 3] = 128  # bottom: half transparent
    decoded = decode_image(_save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert (decoded[:2] == 255).all()
    np.testing.assert_allclose(decoded[3, 0], [255, 127, 127], atol=1)

    la = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 0, np.uint8)], axis=2)
    decoded = decode_image(_save(tmp_path, "la.png", Image.fromarray(la, "LA")))
    assert (decoded == 255).all()

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    decoded = decode_image(_save(tmp_path, "p.gif", palette, transparency=0))
    np.testing.assert_array_equal(decoded[0, 0], [255, 255, 255])  # transparent index
    np.testing.assert_array_equal(decoded[1, 1], [0, 0, 255])


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode_image(_save(tmp_path, "gray.png", Image.fromarray(gray, "L")))
    assert decoded.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (10, 20, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(_save(tmp_path, "rotated.png", image, exif=exif))
    np.testing.assert_array_equal(decoded, np.rot90(pixels, k=-1))


def test_resize_is_shorter_side_then_centre_crop(tmp_path):
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:] = (0, 0, 255)
    for name in ("halves.png", "halves.jpg"):
        decoded = decode_image(_save(tmp_path, name, Image.fromarray(pixels)), size=50)
        assert decoded.shape == (50, 50, 3)
        # 200x100 -> 100x50, centre columns 25..75: left half red, right half blue
        assert decoded[25, 5, 0] > 200 and decoded[25, 5, 2] < 50
        assert decoded[25, 45, 2] > 200 and decoded[25, 45, 0] < 50


def test_bad_payloads_raise_input_error(tmp_path, two_colour_rgb):
    jpeg = _save(tmp_path, "ok.jpg", Image.fromarray(two_colour_rgb))
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(InputError, match="cannot decode image"):
        decode_image((tmp_path / "truncated.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    with pytest.raises(InputError, match="cannot decode image"):
        decode_image((tmp_path / "notes.txt").read_bytes())
    with pytest.raises(InputError, match="media"):
        decode_image(jpeg, media="audio")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # A real PNG header declaring 20000 x 20000 pixels (400 M > MAX_PIXELS): refused from the
    # header alone, so no 1.2 GB buffer is ever allocated.
    width = height = 20_000
    assert width * height > MAX_PIXELS
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * 3)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row * 4))
        + _png_chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(InputError, match="exceeds the limit"):
        decode_image((tmp_path / "bomb.png").read_bytes())
    small = _save(tmp_path, "small.png", Image.new("RGB", (20, 20)))
    with pytest.raises(InputError, match="20x20"):
        decode_image(small, max_pixels=399)
    assert decode_image(small, max_pixels=400).shape == (20, 20, 3)


def test_raw_array_media_round_trips_exactly():
    pixels = np.random.default_rng(2).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    decoded = decode_image(pixels.tobytes(), media="array:6x5x3")
    np.testing.assert_array_equal(decoded, pixels)
    assert decode_image(pixels.tobytes(), media="array:6x5x3", size=4).shape == (4, 4, 3)
    with pytest.raises(InputError, match="expected 6\\*4\\*3"):
        decode_image(pixels.tobytes(), media="array:6x4x3")


def test_decode_video_samples_frames_uniformly(tmp_path):
    truth = synthetic.write_memento(tmp_path, n_videos=1, seed=3, n_frames=8, side=64, fps=8)
    payload = (tmp_path / "videos" / truth["filename"][0]).read_bytes()
    frames_thw3, times_t = decode_video(payload, n_frames=4)
    assert frames_thw3.shape == (4, 64, 64, 3) and frames_thw3.dtype == np.uint8
    # 8 frames over 1 s; slice centres 0.125, 0.375, ... s show frames 1, 3, 5, 7
    np.testing.assert_allclose(times_t, [0.125, 0.375, 0.625, 0.875])
    kind = truth["category"][0]
    for k, time_s in enumerate(times_t):
        written = synthetic.sample_image(kind, np.random.default_rng([3, 0, round(time_s * 8)]), 64)
        others = [
            synthetic.sample_image(kind, np.random.default_rng([3, 0, t]), 64)
            for t in range(8)
            if t != round(time_s * 8)
        ]
        error = np.abs(frames_thw3[k].astype(int) - written).mean()
        assert error < 6
        assert error < min(np.abs(frames_thw3[k].astype(int) - o).mean() for o in others)
    resized, _ = decode_video(payload, n_frames=10, size=32)
    assert resized.shape == (10, 32, 32, 3)


def test_decode_video_rejects_non_videos_and_empty_videos(tmp_path):
    with pytest.raises(InputError, match="cannot decode video"):
        decode_video(b"not a video at all" * 10, n_frames=2)
    path = tmp_path / "empty.mkv"
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # header written, no frame
    with pytest.raises(InputError, match="no decodable frames"):
        decode_video(path.read_bytes(), n_frames=2)
    path = tmp_path / "audio.mp4"
    with av.open(str(path), mode="w") as container:
        container.add_stream("aac", rate=8000)
        container.start_encoding()
    with pytest.raises(InputError, match="no video stream"):
        decode_video(path.read_bytes(), n_frames=2)
