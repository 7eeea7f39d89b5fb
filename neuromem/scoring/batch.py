"""Score decoded batches with a brain encoder: pixels → vertex responses → ROI columns.

:class:`BatchScorer` is the :class:`~neuromem.data.batch.RowModel` of ``neuromem score``: the
image-map engine (:mod:`neuromem.jobs.image_map`) runs one per actor, and the plain PyTorch loop
of ``benchmarks/score_throughput.py`` calls the same object on the same batches, so the two do
exactly the same work.

Its output columns are ``encoder`` (the encoder spec), one float32 ``roi_<NAME>`` column per ROI
and, with ``keep_vertices``, ``vertices`` (20,484 raw float16 responses per row; see
:mod:`neuromem.scoring.table`). The engine puts the reader columns in front of them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from neuromem.cortex.surface import N_VERTICES
from neuromem.data.batch import DecodedBatch, to_float_pixels
from neuromem.scoring.table import VERTICES_COLUMN, VERTICES_TYPE, vertices_to_arrow


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
        Frames decoded per video; None: the encoder's ``clip_frames``.
    """

    def __init__(self, encoder: torch.nn.Module, reducer, *, keep_vertices: bool = False,
                 clip_frames: int | None = None) -> None:
        self.encoder = encoder
        self.reducer = reducer
        self.roi_columns = list(reducer.column_names)
        self.keep_vertices = keep_vertices
        self.device = next(encoder.parameters()).device
        self.input_size = int(encoder.input_size)
        self.clip_frames = int(clip_frames or encoder.clip_frames)
        fields = [pa.field("encoder", pa.string())]
        fields += [pa.field(name, pa.float32()) for name in self.roi_columns]
        if keep_vertices:
            fields.append(pa.field(VERTICES_COLUMN, VERTICES_TYPE))
        self.schema = pa.schema(fields)

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """``encoder``, ROI columns and optional ``vertices`` of the decoded rows."""
        return self.to_table(self.responses(decoded))

    @torch.inference_mode()
    def responses(self, decoded: DecodedBatch) -> torch.Tensor:
        """Encoder responses ``(B, 20484)`` float32 of the decoded rows."""
        if decoded.rows.num_rows == 0:
            return torch.zeros((0, N_VERTICES))
        pixels = to_float_pixels(decoded.pixels, self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if decoded.is_clip:
                responses_bv = self.encoder.forward_clips(pixels)
            else:
                responses_bv = self.encoder(pixels)
        return responses_bv.float()

    def to_table(self, responses_bv: torch.Tensor) -> pa.Table:
        """The output columns of ``(B, 20484)`` responses."""
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
        return pa.Table.from_arrays(columns, schema=self.schema)
