"""Decode batches of loaded rows into pixels, recording the rows that fail: the engine's first half.

A batch is a :class:`pyarrow.Table` of reader rows with ``media`` and ``payload`` columns (see
:mod:`neuromem.data.schema`). :func:`decode_rows` (CPU, a thread pool) and
:func:`decode_rows_cuda` (nvJPEG) turn it into a :class:`DecodedBatch`: the rows that decoded,
their pixels, and an errors table (:data:`ERROR_SCHEMA`) of the rows that did not — a corrupt,
truncated or unreadable file, a video given to a model of still images. A failed row never stops
the batch.

A :class:`RowModel` is what turns decoded batches into output columns; the image-map engine
(:mod:`neuromem.jobs.image_map`) runs one per actor, and plain loops (benchmarks, tests) call it
directly on the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from neuromem.data.decode import decode_image, decode_video
from neuromem.data.schema import (
    IMAGE_ID,
    LOADED_COLUMNS,
    MEDIA,
    MEDIA_IMAGE,
    MEDIA_UNREADABLE,
    MEDIA_VIDEO,
    PAYLOAD,
    SOURCE,
)

if TYPE_CHECKING:  # torch is imported where pixels meet a model (the driver needs none)
    import torch

#: Columns of the errors table.
ERROR_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("source", pa.string()), ("stage", pa.string()),
     ("error", pa.string())]
)


@dataclass
class DecodedBatch:
    """Rows whose payloads decoded, their pixels, and the rows that failed.

    Attributes
    ----------
    rows : pyarrow.Table
        Reader columns (without ``media``/``payload``) of the ``B`` decoded rows.
    pixels : numpy.ndarray, torch.Tensor or list
        uint8 pixels: images ``(B, H, W, 3)`` or clips ``(B, T, H, W, 3)`` (numpy, CPU decode),
        or float images ``(B, 3, H, W)`` in ``[0, 1]`` already on the encoder's device (GPU
        decode), or ``B`` uint8 ``(H_i, W_i, 3)`` arrays of their own sizes (decoded with
        ``size=None``), or ``B`` inputs decoded by a model's own decode hook (:class:`RowModel`).
    is_clip : bool
        True when the rows are videos scored as clips.
    errors : pyarrow.Table
        Failed rows, :data:`ERROR_SCHEMA`.
    seconds : float
        Wall time spent decoding, s.
    """

    rows: pa.Table
    pixels: np.ndarray | torch.Tensor | list[np.ndarray]
    is_clip: bool
    errors: pa.Table
    seconds: float = 0.0


def error_table(image_ids, sources, stage: str, messages) -> pa.Table:
    """Build an errors table (:data:`ERROR_SCHEMA`) from parallel sequences."""
    n_rows = len(image_ids)
    return pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "source": pa.array(list(sources), pa.string()),
            "stage": pa.array([stage] * n_rows, pa.string()),
            "error": pa.array(list(messages), pa.string()),
        },
        schema=ERROR_SCHEMA,
    )


def take_rows(table: pa.Table, indices: list[int]) -> pa.Table:
    """Rows ``indices`` of ``table`` (an empty list gives an empty table of the same schema)."""
    return table.take(pa.array(indices, pa.int64()))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def decode_rows(
    rows: pa.Table,
    size: int | None,
    clip_frames: int,
    executor: Executor | None = None,
    read_video: Callable[[bytes], Any] | None = None,
) -> DecodedBatch:
    """Decode every row's ``payload`` to uint8 pixels on the CPU.

    Parameters
    ----------
    rows : pyarrow.Table
        Reader rows with ``media`` and ``payload`` columns, all images or all videos.
    size : int or None
        Side in pixels of the decoded square (the model's ``input_size``); None keeps each
        image's own size (``pixels`` is then a list).
    clip_frames : int
        Frames sampled per video; 0: videos are failed rows (a model of still images).
    executor : concurrent.futures.Executor or None
        Decodes rows in parallel when given (PIL and PyAV release the GIL while decoding).
    read_video : callable or None
        Reads a video payload in a model's own way (a decode hook, :class:`RowModel`); its
        exceptions make failed rows. None: videos are sampled to ``clip_frames`` squares.

    Returns
    -------
    DecodedBatch
        ``pixels`` is ``(B, size, size, 3)`` for images, ``(B, clip_frames, size, size, 3)``
        for videos, ``B`` the number of rows that decoded; a list with ``size=None`` or
        ``read_video``.
    """
    start = time.perf_counter()
    media = rows.column(MEDIA).to_pylist()
    payloads = rows.column(PAYLOAD).to_pylist()
    is_clip = _is_clip_batch(media)

    def decode_one(i: int) -> np.ndarray | str:
        try:
            if payloads[i] is None or len(payloads[i]) == 0:
                unreadable = media[i].startswith(MEDIA_UNREADABLE)
                raise ValueError(media[i] if unreadable else "empty payload: the file is empty")
            if is_clip and read_video is not None:
                return read_video(payloads[i])
            if is_clip and clip_frames < 1:
                raise ValueError("this model takes still images, not videos")
            if is_clip:
                if size is None:
                    raise ValueError("videos need a decoding size")
                return decode_video(payloads[i], clip_frames, size)[0]
            return decode_image(payloads[i], media[i], size)
        except Exception as exc:  # noqa: BLE001 - any failure of one input is recorded
            return _describe(exc)

    mapper = executor.map if executor is not None else map
    decoded = list(mapper(decode_one, range(rows.num_rows)))
    ok = [i for i, out in enumerate(decoded) if not isinstance(out, str)]
    failed = [i for i, out in enumerate(decoded) if isinstance(out, str)]
    if size is None or (is_clip and read_video is not None):
        pixels = [decoded[i] for i in ok]
    else:
        frame_shape = (clip_frames, size, size, 3) if is_clip else (size, size, 3)
        pixels = (
            np.stack([decoded[i] for i in ok])
            if ok
            else np.zeros((0, *frame_shape), dtype=np.uint8)
        )
    return DecodedBatch(
        rows=_reader_columns(take_rows(rows, ok)),
        pixels=pixels,
        is_clip=is_clip,
        errors=_failed_rows(rows, failed, "decode", [decoded[i] for i in failed]),
        seconds=time.perf_counter() - start,
    )


def decode_rows_cuda(
    rows: pa.Table,
    size: int,
    device: torch.device,
    executor: Executor | None = None,
) -> DecodedBatch:
    """Decode JPEG payloads on the GPU (nvJPEG via :func:`torchvision.io.decode_jpeg`).

    Rows that are not JPEG bytes, or that nvJPEG rejects, fall back to :func:`decode_rows`.
    The decoded images are resized (shorter side, bilinear antialiased) and centre-cropped
    to ``size`` on the GPU, and returned as float ``(B, 3, size, size)`` in ``[0, 1]``.

    Parameters
    ----------
    rows : pyarrow.Table
        Reader rows of still images.
    size : int
        Side in pixels of the output square.
    device : torch.device
        A CUDA device.
    executor : concurrent.futures.Executor or None
        Used by the CPU fallback.
    """
    import torch
    import torchvision.io

    from neuromem.encoders.preprocessing import resize_center_crop

    start = time.perf_counter()
    media = rows.column(MEDIA).to_pylist()
    payloads = rows.column(PAYLOAD).to_pylist()
    is_jpeg = [m == MEDIA_IMAGE and p is not None and p[:2] == b"\xff\xd8" for m, p in zip(media, payloads, strict=True)]
    jpeg_idx = [i for i, flag in enumerate(is_jpeg) if flag]
    images: dict[int, torch.Tensor] = {}
    if jpeg_idx:
        data = [torch.frombuffer(bytearray(payloads[i]), dtype=torch.uint8) for i in jpeg_idx]
        try:
            decoded = torchvision.io.decode_jpeg(
                data, mode=torchvision.io.ImageReadMode.RGB, device=device
            )
        except RuntimeError:  # one bad file fails the whole nvJPEG batch: decode one by one
            decoded = []
            for one in data:
                try:
                    decoded.append(torchvision.io.decode_jpeg(
                        one, mode=torchvision.io.ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        for i, image_3hw in zip(jpeg_idx, decoded, strict=True):
            if image_3hw is not None:
                images[i] = resize_center_crop(image_3hw[None].float() / 255.0, size)[0]
    rest = [i for i in range(rows.num_rows) if i not in images]
    fallback = decode_rows(take_rows(rows, rest), size, 1, executor) if rest else None
    if fallback is not None and fallback.rows.num_rows:
        cpu_ids = set(fallback.rows.column(IMAGE_ID).to_pylist())
        cpu_rows = [i for i in rest if rows.column(IMAGE_ID)[i].as_py() in cpu_ids]
        cpu_b3hw = torch.from_numpy(fallback.pixels).to(device).permute(0, 3, 1, 2).float() / 255.0
        images.update(zip(cpu_rows, cpu_b3hw, strict=True))
    ok = sorted(images)
    pixels = (
        torch.stack([images[i] for i in ok])
        if ok
        else torch.zeros((0, 3, size, size), device=device)
    )
    return DecodedBatch(
        rows=_reader_columns(take_rows(rows, ok)),
        pixels=pixels,
        is_clip=False,
        errors=fallback.errors if fallback is not None else error_table([], [], "decode", []),
        seconds=time.perf_counter() - start,
    )


def _is_clip_batch(media: list[str]) -> bool:
    kinds = {m == MEDIA_VIDEO for m in media if not m.startswith(MEDIA_UNREADABLE)}
    if len(kinds) > 1:
        raise ValueError("a batch mixes videos and still images; readers yield one media kind")
    return kinds == {True}


def _reader_columns(rows: pa.Table) -> pa.Table:
    return rows.drop_columns([c for c in LOADED_COLUMNS if c in rows.column_names])


def _failed_rows(rows: pa.Table, indices: list[int], stage: str, messages: list[str]) -> pa.Table:
    failed = take_rows(rows, indices)
    return error_table(
        failed.column(IMAGE_ID).to_pylist(),
        failed.column(SOURCE).to_pylist(),
        stage,
        messages,
    )


def to_float_pixels(pixels: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` / ``(B, T, H, W, 3)`` → float ``(B, 3, H, W)`` / ``(B, T, 3, H, W)``.

    Float tensors (already decoded on the GPU) are returned as they are.
    """
    import torch

    if isinstance(pixels, torch.Tensor) and pixels.is_floating_point():
        return pixels
    pixels_u8 = torch.as_tensor(pixels).to(device, non_blocking=True)
    channels_first = pixels_u8.movedim(-1, -3)
    return channels_first.float().div_(255.0)


def decode_for(model: RowModel, rows: pa.Table, executor: Executor | None = None,
               *, gpu_decode: bool = True) -> DecodedBatch:
    """Decode ``rows`` as ``model`` wants them: its size and frames, JPEGs on its GPU.

    A model with a ``decode`` hook (:class:`RowModel`) decodes its rows itself. Otherwise JPEG
    still images are decoded with nvJPEG when the model runs on CUDA, ``gpu_decode`` is True
    and the model takes a fixed size; everything else is decoded on the CPU.
    """
    hook = getattr(model, "decode", None)
    if hook is not None:
        return hook(rows, executor)
    media = rows.column(MEDIA).to_pylist()
    on_gpu = gpu_decode and model.device.type == "cuda" and model.input_size is not None
    if on_gpu and rows.num_rows and not _is_clip_batch(media):
        return decode_rows_cuda(rows, model.input_size, model.device, executor)
    return decode_rows(rows, model.input_size, model.clip_frames, executor)


class RowModel(Protocol):
    """A model the image-map engine runs on decoded batches (one instance per actor).

    Attributes
    ----------
    input_size : int or None
        Side in pixels of the square images are decoded to (shorter-side resize, centre
        crop); None decodes every image at its own size (``pixels`` is then a list).
    clip_frames : int
        Frames decoded per video; 0 when the model takes still images only (a video is then a
        failed row).
    device : torch.device
        Where the model runs (JPEGs are decoded there with nvJPEG when it is a GPU).
    schema : pyarrow.Schema
        The columns :meth:`__call__` returns.

    A model may also define ``decode(rows, executor) -> DecodedBatch``, the decode hook: it then
    decodes its loaded rows itself (:func:`decode_for` calls it; ``pixels`` is whatever list
    of per-row inputs its :meth:`__call__` takes), e.g. to read videos with its upstream's
    frame timing. Such a model cannot decode in separate tasks (``decode="tasks"``).
    """

    input_size: int | None
    clip_frames: int
    device: torch.device
    schema: pa.Schema

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """Output columns (:attr:`schema`) of the decoded rows, one row each, in order."""
        ...
