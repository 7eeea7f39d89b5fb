"""What a probe is fitted to: a score table's vertices (distillation) or NSD betas."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from neuromem.errors import InputError

log = logging.getLogger(__name__)


def vertex_targets(table: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows (``image_id``, ``dataset``, ``source``) and ``(N, 20484)`` float32 vertex targets."""
    from neuromem.scoring.table import VERTICES_COLUMN, decode_vertices, open_table

    dataset = open_table(table)
    if VERTICES_COLUMN not in dataset.schema.names:
        raise InputError(
            f"score table {table!r} has no {VERTICES_COLUMN!r} column; score it with "
            "--keep-vertices, or fit to NSD betas with --targets nsd"
        )
    data = dataset.to_table(columns=["image_id", "dataset", "source", VERTICES_COLUMN])
    targets_nv = decode_vertices(data.column(VERTICES_COLUMN), dtype=np.float32)
    rows = data.drop_columns([VERTICES_COLUMN]).to_pandas()
    finite = np.isfinite(targets_nv).all(axis=1)
    if not finite.all():
        log.warning("dropping %d rows with non-finite vertices", int((~finite).sum()))
    return rows[finite].reset_index(drop=True), targets_nv[finite]


def nsd_targets(
    table: str | None, root: str, subject: int, sessions: list[int], trials_per_session: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, betas ``(N, 20484)``, repetitions ``(N,)`` and noise ceiling ``(20484,)`` in %."""
    from neuromem.probes import nsd_betas

    nsd_ids_m, betas_mv, n_reps_m = nsd_betas.read_subject(
        root, subject, sessions, trials_per_session=trials_per_session
    )
    if table is None:
        from neuromem.data.readers import list_rows

        rows = list_rows("nsd", root)
    else:
        from neuromem.scoring.table import VERTICES_COLUMN, open_table

        dataset = open_table(table)
        columns = [c for c in dataset.schema.names if c != VERTICES_COLUMN]
        rows = dataset.to_table(columns=columns).to_pandas()
    if "nsdId" not in rows.columns:
        raise InputError("NSD targets need an 'nsdId' column in the image table (NSD listing)")
    rows = rows.drop_duplicates("nsdId")
    position = pd.Series(np.arange(len(nsd_ids_m)), index=nsd_ids_m)
    rows = rows[rows["nsdId"].isin(position.index)].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"none of the images with betas of subject {subject} is in the table")
    keep = position.loc[rows["nsdId"].to_numpy(np.int64)].to_numpy()
    ceiling_v = nsd_betas.noise_ceiling(nsd_betas.read_ncsnr(root, subject), n_reps_m[keep])
    return rows, betas_mv[keep], n_reps_m[keep], ceiling_v
