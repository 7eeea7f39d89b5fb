"""Score decoded batches with a brain encoder: pixels → vertex responses → ROI columns.

:class:`BatchScorer` is the :class:`~neuromem.data.batch.RowModel` of ``neuromem score``: the
image-map engine (:mod:`neuromem.jobs.image_map`) runs one per actor, and the plain PyTorch loop
of ``benchmarks/score_throughput.py`` calls the same object on the same batches, so the two do
exactly the same work.

Its output columns are ``encoder`` (the encoder spec), one float32 ``roi_<NAME>`` column per ROI,
with ``keep_vertices`` ``vertices`` (20,484 raw float16 responses per row; see
:mod:`neuromem.scoring.table`) and with ``keep_timecourse`` ``timecourse`` (each video's ROI
responses at every fMRI step; :mod:`neuromem.scoring.timecourse`). The engine puts the reader
columns in front of them.

An encoder with ``native_inputs`` (TRIBE v2) gets its rows through the scorer's decode hook: stills
at their own size, videos read with upstream's frame timing, never resampled to a square before
the encoder's own preprocessing. A video's ROI and vertex values are then the mean of its time
course over the fMRI steps it overlaps.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np
import pyarrow as pa
import torch

from neuromem.cortex.surface import N_VERTICES
from neuromem.data.batch import DecodedBatch, decode_rows, to_float_pixels
from neuromem.errors import InputError
from neuromem.scoring.table import VERTICES_COLUMN, VERTICES_TYPE, vertices_to_arrow
from neuromem.scoring.timecourse import TIMECOURSE_COLUMN, TIMECOURSE_TYPE, timecourse_column


class BatchScorer:
    """Encode and reduce decoded batches with one encoder (a ``RowModel``).

    Parameters
    ----------
    encoder : neuromem.encoders.base.BrainEncoder
        The brain encoder, already on its device and in eval mode.
    reducer : neuromem.cortex.reduce.RoiReducer
        ``(B, 20484)`` → ``(B, R)`` mean response per ROI.
    keep_vertices : bool
        Add the ``vertices`` column.
    clip_frames : int or None
        Frames decoded per video; None: the encoder's ``clip_frames`` (unused by encoders with
        ``native_inputs``, which read every frame their windows need).
    keep_timecourse : bool
        Add the ``timecourse`` column (videos; null for stills). Needs an encoder with
        ``native_inputs``.
    """

    def __init__(self, encoder: torch.nn.Module, reducer, *, keep_vertices: bool = False,
                 clip_frames: int | None = None, keep_timecourse: bool = False) -> None:
        self.encoder = encoder
        self.reducer = reducer
        self.roi_columns = list(reducer.column_names)
        self.keep_vertices = keep_vertices
        self.keep_timecourse = keep_timecourse
        self.native = bool(getattr(encoder, "native_inputs", False))
        if keep_timecourse and not self.native:
            raise InputError(f"encoder {encoder.spec!r} predicts no time course; "
                             "--keep-timecourse needs an encoder that reads videos (tribev2)")
        self.device = next(encoder.parameters()).device
        self.input_size = None if self.native else int(encoder.input_size)
        self.clip_frames = int(clip_frames or encoder.clip_frames)
        if self.native:
            self.decode = self._decode_native
        fields = [pa.field("encoder", pa.string())]
        fields += [pa.field(name, pa.float32()) for name in self.roi_columns]
        if keep_vertices:
            fields.append(pa.field(VERTICES_COLUMN, VERTICES_TYPE))
        if keep_timecourse:
            fields.append(pa.field(TIMECOURSE_COLUMN, TIMECOURSE_TYPE))
        self.schema = pa.schema(fields)

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """``encoder``, ROI columns and optional ``vertices`` / ``timecourse`` of the rows."""
        if not self.native or not decoded.is_clip:
            return self.to_table(self.responses(decoded))
        timecourses_tv = self.timecourses(decoded)
        responses_bv = (torch.stack([tc.mean(dim=0) for tc in timecourses_tv])
                        if timecourses_tv else torch.zeros((0, N_VERTICES)))
        return self.to_table(responses_bv, timecourses_tv)

    def _decode_native(self, rows: pa.Table, executor: Executor | None = None) -> DecodedBatch:
        """The decode hook of encoders with ``native_inputs``: stills at their own size,
        videos by the encoder's ``read_video``."""
        return decode_rows(rows, None, 1, executor, read_video=self.encoder.read_video)

    @torch.inference_mode()
    def responses(self, decoded: DecodedBatch) -> torch.Tensor:
        """Encoder responses ``(B, 20484)`` float32 of decoded stills or clips."""
        if decoded.rows.num_rows == 0:
            return torch.zeros((0, N_VERTICES))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.native and not decoded.is_clip:
                return self.encoder.forward_stills(decoded.pixels).float()
            pixels = to_float_pixels(decoded.pixels, self.device)
            if decoded.is_clip:
                responses_bv = self.encoder.forward_clips(pixels)
            else:
                responses_bv = self.encoder(pixels)
        return responses_bv.float()

    @torch.inference_mode()
    def timecourses(self, decoded: DecodedBatch) -> list[torch.Tensor]:
        """Response time course ``(T_i, 20484)`` float32 of each video read by the hook."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return [self.encoder.video_timecourse(video).float() for video in decoded.pixels]

    def to_table(self, responses_bv: torch.Tensor,
                 timecourses_tv: list[torch.Tensor] | None = None) -> pa.Table:
        """The output columns of ``(B, 20484)`` responses (and the videos' time courses)."""
        n_rows = responses_bv.shape[0]
        columns: list[pa.Array] = [pa.array([self.encoder.spec] * n_rows, pa.string())]
        if n_rows:
            rois_br = self.reducer(responses_bv).float().cpu().numpy()
        else:
            rois_br = np.zeros((0, len(self.roi_columns)), np.float32)
        columns += [pa.array(rois_br[:, r], pa.float32()) for r in range(len(self.roi_columns))]
        if self.keep_vertices:
            vertices_bv = responses_bv.half().cpu().numpy().reshape(n_rows, N_VERTICES)
            columns.append(vertices_to_arrow(vertices_bv))
        if self.keep_timecourse:
            rois_tr = ([self.reducer(tc).float().cpu().numpy() for tc in timecourses_tv]
                       if timecourses_tv is not None else [None] * n_rows)
            columns.append(timecourse_column(rois_tr, len(self.roi_columns)))
        return pa.Table.from_arrays(columns, schema=self.schema)
