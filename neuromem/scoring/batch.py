"""Score one batch of dataset rows: payload bytes → pixels → brain encoder → ROI columns.

This is the whole per-batch computation of ``neuromem score``. The Ray actor of
:mod:`neuromem.scoring.job` and the plain PyTorch loop of ``benchmarks/score_throughput.py``
both call :class:`BatchScorer`, so the two do exactly the same work.

A batch is a :class:`pyarrow.Table` of reader rows (``image_id``, ``dataset``, ``split``,
``source``, ``memorability``, ``category``, dataset columns, ``media``, ``payload``; see
ARCHITECTURE.md). Decoding turns it into a :class:`DecodedBatch`; scoring turns that into two
tables: the scored rows (reader columns without ``media``/``payload``, ``encoder``,
``roi_<NAME>`` float32, optionally ``vertices``) and the failed rows (``image_id``, ``source``,
``stage``, ``error``). A row that cannot be decoded (corrupt or unreadable file, a video with no
frames) is a failed row; it never stops the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from neuromem.cortex.surface import N_VERTICES
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
from neuromem.scoring.table import VERTICES_COLUMN, vertices_to_arrow

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
    pixels : numpy.ndarray or torch.Tensor
        uint8 pixels: images ``(B, H, W, 3)`` or clips ``(B, T, H, W, 3)`` (numpy, CPU decode),
        or float images ``(B, 3, H, W)`` in ``[0, 1]`` already on the encoder's device (GPU
        decode).
    is_clip : bool
        True when the rows are videos scored as clips.
    errors : pyarrow.Table
        Failed rows, :data:`ERROR_SCHEMA`.
    seconds : float
        Wall time spent decoding, s.
    """

    rows: pa.Table
    pixels: np.ndarray | torch.Tensor
    is_clip: bool
    errors: pa.Table
    seconds: float = 0.0


@dataclass
class ScoredBatch:
    """Output of :meth:`BatchScorer.score`: scored rows, failed rows and where the time went."""

    scores: pa.Table
    errors: pa.Table
    timings: dict[str, float] = field(default_factory=dict)


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
    size: int,
    clip_frames: int,
    executor: Executor | None = None,
) -> DecodedBatch:
    """Decode every row's ``payload`` to uint8 pixels on the CPU.

    Parameters
    ----------
    rows : pyarrow.Table
        Reader rows with ``media`` and ``payload`` columns, all images or all videos.
    size : int
        Side in pixels of the decoded square (the encoder's ``input_size``).
    clip_frames : int
        Frames sampled per video.
    executor : concurrent.futures.Executor or None
        Decodes rows in parallel when given (PIL and PyAV release the GIL while decoding).

    Returns
    -------
    DecodedBatch
        ``pixels`` is ``(B, size, size, 3)`` for images, ``(B, clip_frames, size, size, 3)``
        for videos, ``B`` the number of rows that decoded.
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
            if is_clip:
                return decode_video(payloads[i], clip_frames, size)[0]
            return decode_image(payloads[i], media[i], size)
        except Exception as exc:  # noqa: BLE001 - any failure of one input is recorded
            return _describe(exc)

    mapper = executor.map if executor is not None else map
    decoded = list(mapper(decode_one, range(rows.num_rows)))
    ok = [i for i, out in enumerate(decoded) if not isinstance(out, str)]
    failed = [i for i, out in enumerate(decoded) if isinstance(out, str)]
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
    if isinstance(pixels, torch.Tensor) and pixels.is_floating_point():
        return pixels
    pixels_u8 = torch.as_tensor(pixels).to(device, non_blocking=True)
    channels_first = pixels_u8.movedim(-1, -3)
    return channels_first.float().div_(255.0)


class BatchScorer:
    """Decode, encode and reduce batches of reader rows with one encoder.

    Parameters
    ----------
    encoder : neuromem.encoders.base.BrainEncoder
        The brain encoder, already on ``device`` and in eval mode.
    reducer : callable
        :class:`neuromem.cortex.reduce.RoiReducer`: ``(B, 20484)`` → ``(B, R)``.
    roi_columns : list of str
        Names of the ROI columns (``reducer.column_names``), ``R`` of them.
    keep_vertices : bool
        Add the ``vertices`` column (20,484 float16 responses per row).
    executor : concurrent.futures.Executor or None
        Thread pool for CPU decoding.
    gpu_decode : bool
        Decode JPEG still images on the GPU (only used when the encoder is on CUDA).
    clip_frames : int or None
        Frames decoded per video; None: the encoder's ``clip_frames``.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        reducer: Callable,
        roi_columns: list[str],
        *,
        keep_vertices: bool = False,
        executor: Executor | None = None,
        gpu_decode: bool = True,
        clip_frames: int | None = None,
    ) -> None:
        self.encoder = encoder
        self.reducer = reducer
        self.roi_columns = list(roi_columns)
        self.keep_vertices = keep_vertices
        self.executor = executor
        self.device = next(encoder.parameters()).device
        self.gpu_decode = gpu_decode and self.device.type == "cuda"
        self.clip_frames = int(clip_frames or encoder.clip_frames)

    def decode(self, rows: pa.Table) -> DecodedBatch:
        """Decode a batch of reader rows (on the GPU for JPEG images when enabled)."""
        media = rows.column(MEDIA).to_pylist()
        if self.gpu_decode and rows.num_rows and not _is_clip_batch(media):
            return decode_rows_cuda(rows, self.encoder.input_size, self.device, self.executor)
        return decode_rows(rows, self.encoder.input_size, self.clip_frames, self.executor)

    def score(self, decoded: DecodedBatch) -> ScoredBatch:
        """Run the encoder and the ROI reduction on decoded rows.

        Returns
        -------
        ScoredBatch
            ``scores``: the decoded rows' reader columns, ``encoder`` (the encoder spec),
            ``roi_<NAME>`` float32 and, with ``keep_vertices``, ``vertices``.
        """
        start = time.perf_counter()
        responses_bv = self.responses(decoded)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        encoded = time.perf_counter()
        scores = self.to_table(decoded.rows, responses_bv)
        done = time.perf_counter()
        return ScoredBatch(
            scores=scores,
            errors=decoded.errors,
            timings={
                "decode_s": decoded.seconds,
                "encode_s": encoded - start,
                "table_s": done - encoded,
            },
        )

    def __call__(self, rows: pa.Table) -> ScoredBatch:
        """Decode then score a batch of reader rows."""
        return self.score(self.decode(rows))

    @torch.inference_mode()
    def responses(self, decoded: DecodedBatch) -> torch.Tensor:
        """Encoder responses ``(B, 20484)`` float32 of the decoded rows."""
        n_rows = decoded.rows.num_rows
        if n_rows == 0:
            return torch.zeros((0, N_VERTICES))
        pixels = to_float_pixels(decoded.pixels, self.device)
        with torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            if decoded.is_clip:
                responses_bv = self.encoder.forward_clips(pixels)
            else:
                responses_bv = self.encoder(pixels)
        return responses_bv.float()

    def to_table(self, rows: pa.Table, responses_bv: torch.Tensor) -> pa.Table:
        """Arrow table of reader columns, ``encoder``, ROI columns and optional vertices."""
        n_rows = rows.num_rows
        table = rows.append_column(
            "encoder", pa.array([self.encoder.spec] * n_rows, pa.string())
        )
        if n_rows:
            rois_br = self.reducer(responses_bv).float().cpu().numpy()
        else:
            rois_br = np.zeros((0, len(self.roi_columns)), np.float32)
        for r, name in enumerate(self.roi_columns):
            table = table.append_column(name, pa.array(rois_br[:, r], pa.float32()))
        if self.keep_vertices:
            vertices_bv = responses_bv.half().cpu().numpy().reshape(n_rows, N_VERTICES)
            table = table.append_column(VERTICES_COLUMN, vertices_to_arrow(vertices_bv))
        return table
