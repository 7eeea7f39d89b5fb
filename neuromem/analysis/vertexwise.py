"""Correlation of every vertex with memorability, streamed over a score table's row groups.

Pearson r needs, per vertex, only the count, the two means, the two sums of squared deviations
and the sum of cross-products. :class:`VertexMoments` holds them in float64 and
:meth:`VertexMoments.merge` combines two sets exactly (Chan, Golub & LeVeque's pairwise
update), so one pass over the row groups gives the same r as the whole matrix at once, and the
same code runs as a map-reduce over many files (``pipelines.decompose``).

Each block of rows is reduced with raw sums in float64 (one matrix product ``[1, y]ᵀ X`` and a
column-wise sum of squares), then converted to centred moments before merging. Float16 inputs
have at most 11 significant bits, so the cancellation in ``Σx² - n·x̄²`` inside one block stays
far below the precision of the data.

Spearman ρ is Pearson r on ranks, and ranks of a vertex need all its values at once, so it
cannot be streamed exactly over rows. :func:`vertex_spearman` makes it exact with bounded memory
by streaming over *vertices* instead: memorability is ranked once over the kept rows, then the
table is read once per chunk of vertices, each chunk's ``(n, chunk)`` values ranked per column
(average ties) and correlated with the memorability ranks.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from neuromem.cortex.surface import N_VERTICES
from neuromem.errors import InputError
from neuromem.scoring.table import (
    VERTICES_COLUMN,
    PathOrDataset,
    as_filter_expression,
    decode_vertices,
    iter_batches,
    open_table,
)

BLOCK_ROWS = 512
"""Rows reduced at once: a float64 block of 1024 × 20484 values is 168 MB."""


@dataclass
class VertexMoments:
    """Mergeable sufficient statistics of (vertex value, memorability) pairs, per vertex.

    Attributes
    ----------
    n_v : ndarray of shape (V,) int64
        Complete pairs per vertex.
    mean_x_v, mean_y_v : ndarray of shape (V,) float64
        Means of the vertex values and of memorability over those pairs.
    m2_x_v, m2_y_v : ndarray of shape (V,) float64
        Sums of squared deviations from those means.
    c_xy_v : ndarray of shape (V,) float64
        Sum of cross-products of deviations.
    """

    n_v: np.ndarray
    mean_x_v: np.ndarray
    mean_y_v: np.ndarray
    m2_x_v: np.ndarray
    m2_y_v: np.ndarray
    c_xy_v: np.ndarray

    @classmethod
    def empty(cls, n_vertices: int = N_VERTICES) -> VertexMoments:
        """Moments of no data."""
        zeros = np.zeros(n_vertices)
        return cls(np.zeros(n_vertices, np.int64), *(zeros.copy() for _ in range(5)))

    @classmethod
    def from_block(cls, values_nv: np.ndarray, y_n: np.ndarray) -> VertexMoments:
        """Moments of one block of rows.

        Parameters
        ----------
        values_nv : ndarray of shape (n, V)
            Vertex values (any float dtype; NaN marks a missing value).
        y_n : ndarray of shape (n,)
            Memorability; rows where it is not finite are left out.
        """
        y_n = np.asarray(y_n, dtype=np.float64)
        if values_nv.ndim != 2 or values_nv.shape[0] != y_n.shape[0]:
            raise InputError(
                f"expected values (n, V) and memorability (n,); got {values_nv.shape}, {y_n.shape}"
            )
        keep = np.isfinite(y_n)
        if not keep.all():
            values_nv, y_n = values_nv[keep], y_n[keep]
        x_nv = np.asarray(values_nv, dtype=np.float64)
        n_v = np.full(x_nv.shape[1], float(len(y_n)))
        sum_y_v = np.full(x_nv.shape[1], y_n.sum())
        sum_yy_v = np.full(x_nv.shape[1], y_n @ y_n)
        sum_x_v, sum_xy_v = np.stack([np.ones_like(y_n), y_n]) @ x_nv
        sum_xx_v = np.einsum("nv,nv->v", x_nv, x_nv)
        if not (np.isfinite(sum_xy_v).all() and np.isfinite(sum_xx_v).all()):
            # some vertex values are missing (NaN/inf): redo the block with a presence mask
            present_nv = np.isfinite(x_nv)
            x_nv = np.where(present_nv, x_nv, 0.0)
            present_nv = present_nv.astype(np.float64)
            n_v = present_nv.sum(0)
            sum_y_v, sum_yy_v = np.stack([y_n, y_n * y_n]) @ present_nv
            sum_x_v, sum_xy_v = np.stack([np.ones_like(y_n), y_n]) @ x_nv
            sum_xx_v = np.einsum("nv,nv->v", x_nv, x_nv)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_x_v = np.where(n_v > 0, sum_x_v / n_v, 0.0)
            mean_y_v = np.where(n_v > 0, sum_y_v / n_v, 0.0)
        return cls(
            n_v.astype(np.int64),
            mean_x_v,
            mean_y_v,
            np.maximum(sum_xx_v - n_v * mean_x_v**2, 0.0),
            np.maximum(sum_yy_v - n_v * mean_y_v**2, 0.0),
            sum_xy_v - n_v * mean_x_v * mean_y_v,
        )

    def merge(self, other: VertexMoments) -> VertexMoments:
        """Moments of the union of the two sets of rows (exact, order-independent up to rounding)."""
        n_a, n_b = self.n_v.astype(np.float64), other.n_v.astype(np.float64)
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            w_b = np.where(n > 0, n_b / n, 0.0)
            cross = np.where(n > 0, n_a * n_b / n, 0.0)
        dx = other.mean_x_v - self.mean_x_v
        dy = other.mean_y_v - self.mean_y_v
        return VertexMoments(
            self.n_v + other.n_v,
            self.mean_x_v + dx * w_b,
            self.mean_y_v + dy * w_b,
            self.m2_x_v + other.m2_x_v + dx * dx * cross,
            self.m2_y_v + other.m2_y_v + dy * dy * cross,
            self.c_xy_v + other.c_xy_v + dx * dy * cross,
        )

    def pearson_r(self) -> np.ndarray:
        """Pearson r per vertex, ``(V,)``; NaN where a vertex or memorability is constant or n < 2."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r_v = self.c_xy_v / np.sqrt(self.m2_x_v * self.m2_y_v)
        r_v[(self.n_v < 2) | (self.m2_x_v <= 0) | (self.m2_y_v <= 0)] = np.nan
        return np.clip(r_v, -1.0, 1.0)


def merge_all(parts: Iterable[VertexMoments]) -> VertexMoments:
    """Merge any number of :class:`VertexMoments` (the reduce step)."""
    total = None
    for part in parts:
        total = part if total is None else total.merge(part)
    if total is None:
        raise InputError("no vertex moments to merge: the table has no rows")
    return total


def _blocks(
    batches: Iterable[pa.RecordBatch], memorability_column: str, vertices_column: str, rows: int
) -> Iterator[tuple[list[pa.Array], np.ndarray]]:
    """Regroup batches of any size into blocks of ``rows`` rows: (vertex column pieces, y)."""
    pieces, ys, filled = [], [], 0
    for batch in batches:
        y_n = batch.column(memorability_column).to_numpy(zero_copy_only=False).astype(np.float64)
        column = batch.column(vertices_column)
        start = 0
        while start < batch.num_rows:
            take = min(rows - filled, batch.num_rows - start)
            pieces.append(column.slice(start, take))
            ys.append(y_n[start : start + take])
            filled += take
            start += take
            if filled == rows:
                yield pieces, np.concatenate(ys)
                pieces, ys, filled = [], [], 0
    if filled:
        yield pieces, np.concatenate(ys)


def moments_of_batches(
    batches: Iterable[pa.RecordBatch],
    memorability_column: str,
    *,
    vertices_column: str = VERTICES_COLUMN,
    block_rows: int = BLOCK_ROWS,
    n_threads: int = 2,
) -> VertexMoments:
    """Stream record batches (vertex column + memorability) into one :class:`VertexMoments`.

    Batches of any size (score tables often hold one small file per scoring batch) are
    regrouped into blocks of ``block_rows`` rows. ``n_threads`` threads each decode a block into
    their own float64 buffer and reduce it (numpy releases the GIL), while this thread reads
    ahead; blocks are merged in table order, so the result does not depend on ``n_threads``.
    Memory: ``n_threads × block_rows × 20484 × 8`` bytes of buffers.
    """
    if n_threads < 1:
        raise InputError(f"n_threads must be at least 1; got {n_threads}")
    free = queue.SimpleQueue()
    for _ in range(n_threads):
        free.put(np.empty((block_rows, N_VERTICES), dtype=np.float64))

    def reduce_block(pieces: list[pa.Array], y_n: np.ndarray) -> VertexMoments:
        buffer_nv = free.get()
        try:
            start = 0
            for piece in pieces:
                stop = start + len(piece)
                decode_vertices(piece, dtype=np.float64, out=buffer_nv[start:stop])
                start = stop
            return VertexMoments.from_block(buffer_nv[:start], y_n)
        finally:
            free.put(buffer_nv)

    total = VertexMoments.empty()
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(n_threads) as pool:
        for pieces, y_n in _blocks(batches, memorability_column, vertices_column, block_rows):
            if len(pending) == n_threads:
                total = total.merge(pending.popleft().result())
            pending.append(pool.submit(reduce_block, pieces, y_n))
        while pending:
            total = total.merge(pending.popleft().result())
    return total


def vertex_moments(
    path_or_dataset: PathOrDataset,
    memorability_column: str = "memorability",
    *,
    vertices_column: str = VERTICES_COLUMN,
    filters=None,
    filesystem=None,
    block_rows: int = BLOCK_ROWS,
    n_threads: int = 2,
) -> VertexMoments:
    """One streaming pass over a score table (or one of its files) giving per-vertex moments.

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pyarrow.dataset.Dataset
        Score table, or a single Parquet file of it (the map step of a map-reduce).
    memorability_column : str
        Numeric column correlated with each vertex.
    vertices_column : str
        The vertex column.
    filters : pyarrow.dataset.Expression or list of tuples, optional
        Row filter.
    filesystem : pyarrow.fs.FileSystem, optional
        Filesystem of a path that is not a URI.
    block_rows : int
        Rows reduced at once (memory: ``block_rows × 20484 × 8`` bytes per thread).
    n_threads : int
        Threads decoding and reducing blocks (see :func:`moments_of_batches`).

    Returns
    -------
    VertexMoments
    """
    batches = iter_batches(
        path_or_dataset,
        columns=[vertices_column, memorability_column],
        filters=filters,
        batch_size=block_rows,
        filesystem=filesystem,
    )
    return moments_of_batches(
        batches,
        memorability_column,
        vertices_column=vertices_column,
        block_rows=block_rows,
        n_threads=n_threads,
    )


def vertex_pearson(
    path_or_dataset: PathOrDataset, memorability_column: str = "memorability", **kwargs
) -> np.ndarray:
    """Pearson r of every vertex with memorability, ``(20484,)``, in one streaming pass.

    Keyword arguments go to :func:`vertex_moments`.
    """
    return vertex_moments(path_or_dataset, memorability_column, **kwargs).pearson_r()


def vertex_spearman(
    path_or_dataset: PathOrDataset,
    memorability_column: str = "memorability",
    *,
    vertices_column: str = VERTICES_COLUMN,
    filters=None,
    filesystem=None,
    max_bytes: int = 256 * 2**20,
) -> np.ndarray:
    """Spearman ρ of every vertex with memorability, ``(20484,)``, exact, by vertex chunks.

    Memorability is read and ranked once over the rows where it is finite; then the table is
    read once per chunk of vertices (chunk width chosen so ``n × width`` float64 values fit in
    ``max_bytes``), each vertex's values ranked over those rows (average ties) and correlated
    with the memorability ranks. A vertex with missing values is ranked over its complete rows,
    with memorability re-ranked over the same rows.
    """
    dataset = open_table(path_or_dataset, filesystem=filesystem)
    y_table = dataset.to_table(columns=[memorability_column], filter=as_filter_expression(filters))
    y_n = y_table.column(memorability_column).to_numpy(zero_copy_only=False).astype(np.float64)
    keep = np.isfinite(y_n)
    n = int(keep.sum())
    rho_v = np.full(N_VERTICES, np.nan)
    if n < 3:
        return rho_v
    y_rank = stats.rankdata(y_n[keep])
    y_rank -= y_rank.mean()
    width = int(max(1, min(N_VERTICES, max_bytes // (8 * n))))
    for lo in range(0, N_VERTICES, width):
        hi = min(N_VERTICES, lo + width)
        chunk_nv = np.empty((n, hi - lo))
        row = 0
        for batch in iter_batches(
            dataset, columns=[vertices_column, memorability_column], filters=filters
        ):
            batch_keep = np.isfinite(
                batch.column(memorability_column).to_numpy(zero_copy_only=False).astype(float)
            )
            values = decode_vertices(pc.filter(batch.column(vertices_column), pa.array(batch_keep)))
            chunk_nv[row : row + len(values)] = values[:, lo:hi]
            row += len(values)
        rho_v[lo:hi] = _rank_correlate(chunk_nv, y_n[keep], y_rank)
    return rho_v


def _rank_correlate(values_nv: np.ndarray, y_n: np.ndarray, y_rank_n: np.ndarray) -> np.ndarray:
    """Spearman ρ of each column with ``y`` (centred ``y`` ranks given for complete columns)."""
    complete_v = np.isfinite(values_nv).all(0)
    rho_v = np.full(values_nv.shape[1], np.nan)
    ranks_nv = stats.rankdata(values_nv[:, complete_v], axis=0)
    ranks_nv -= ranks_nv.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_v[complete_v] = (y_rank_n @ ranks_nv) / np.sqrt(
            (y_rank_n @ y_rank_n) * np.einsum("nv,nv->v", ranks_nv, ranks_nv)
        )
    for v in np.flatnonzero(~complete_v):
        ok = np.isfinite(values_nv[:, v])
        if ok.sum() >= 3 and np.ptp(values_nv[ok, v]) > 0:
            rho_v[v] = stats.spearmanr(values_nv[ok, v], y_n[ok]).statistic
    return np.clip(rho_v, -1.0, 1.0)


def roi_sign_coherence(
    r_v: np.ndarray, roi_indices: dict[str, np.ndarray] | Sequence
) -> dict[str, tuple[float, float]]:
    """Fraction of each ROI's vertices with r < 0 and with r > 0 (NaN vertices left out).

    Parameters
    ----------
    r_v : ndarray of shape (20484,)
        Vertex correlations.
    roi_indices : dict of str to ndarray of int
        Vertex indices of each ROI.

    Returns
    -------
    dict of str to (frac_negative, frac_positive)
        NaN fractions for an ROI with no finite vertex.
    """
    out = {}
    for roi, idx in dict(roi_indices).items():
        values = r_v[np.asarray(idx)]
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[roi] = (np.nan, np.nan)
        else:
            out[roi] = (float(np.mean(values < 0)), float(np.mean(values > 0)))
    return out
