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

The partial correlation of every vertex with memorability controlling for the category (one-hot,
i.e. an intercept per category) and numeric covariates streams the same way:
:class:`GroupedVertexMoments` keeps the centred moments of (vertex, memorability, covariates)
per category and merges blocks with the same pairwise update. Residualising on the category
indicators is centring within each category (Frisch-Waugh-Lovell), so summing the within-category
centred moments over categories gives the moments of the category residuals; the numeric
covariates are then partialled out of that pooled matrix, per vertex. Rows whose category or
covariates are missing count in the raw map but not in the partial one (as in
:func:`neuromem.analysis.partial.partial_correlation`).

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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from neuromem.cortex.surface import N_VERTICES, N_VERTICES_HEMI
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


def merge_weights(n_a, n_b) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the pairwise (Chan et al.) merge of two sets of moments with counts ``n_a``,
    ``n_b``: the second set's share ``n_b / n`` of the means, and ``n_a n_b / n`` of the squared
    mean difference added to the centred sums (0 where both are empty)."""
    n_a, n_b = np.asarray(n_a, np.float64), np.asarray(n_b, np.float64)
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, n_b / n, 0.0), np.where(n > 0, n_a * n_b / n, 0.0)


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
        w_b, cross = merge_weights(self.n_v, other.n_v)
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


@dataclass(frozen=True)
class Controls:
    """What a partial vertex map controls for.

    Attributes
    ----------
    category : str or None
        Category column (one-hot; an intercept per level).
    levels : tuple of str
        The category's levels (labels as strings); rows with another or a missing label are
        left out of the partial map.
    covariates : tuple of str
        Numeric columns partialled out as well.
    """

    category: str | None
    levels: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """Table columns the controls read."""
        return [*([self.category] if self.category else []), *self.covariates]

    @property
    def n_groups(self) -> int:
        """Category levels (1 without a category)."""
        return max(1, len(self.levels)) if self.category else 1

    def encode(self, columns: dict[str, np.ndarray], y_n: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """``w_nk`` (memorability, then covariates) and each row's group (``n_groups``: missing).

        Parameters
        ----------
        columns : dict of str to ndarray of shape (n,)
            The control columns of a block of rows.
        y_n : ndarray of shape (n,)
            Memorability.
        """
        cov = [np.asarray(columns[c], dtype=np.float64) for c in self.covariates]
        w_nk = np.column_stack([y_n, *cov])
        if self.category:
            labels = pd.Series(np.asarray(columns[self.category], dtype=object))
            codes = pd.Categorical(labels.astype(str), categories=list(self.levels)).codes
            group_n = np.where(labels.isna().to_numpy() | (codes < 0), self.n_groups,
                               codes).astype(np.int64)
        else:
            group_n = np.zeros(len(y_n), dtype=np.int64)
        group_n[~np.isfinite(w_nk[:, 1:]).all(1)] = self.n_groups
        w_nk[:, 1:] = np.where(np.isfinite(w_nk[:, 1:]), w_nk[:, 1:], 0.0)
        return w_nk, group_n


@dataclass
class GroupedVertexMoments:
    """Mergeable moments of (vertex value, memorability, covariates) per category, per vertex.

    Group ``g < G`` holds the rows of the ``g``-th category level; group ``G`` the rows whose
    category or covariates are missing (they count only in :meth:`pooled`). ``w`` is
    memorability followed by the ``K - 1`` covariates. Memory: ``(G + 1) × V × (K² + 2K + 3)``
    float64 values (``G = 10, K = 1``: 10 MB).

    Attributes
    ----------
    n_gv : ndarray of shape (G + 1, V) int64
        Complete pairs per group and vertex.
    mean_x_gv : ndarray of shape (G + 1, V)
        Vertex means.
    mean_w_gkv : ndarray of shape (G + 1, K, V)
        Means of memorability and covariates over the same rows.
    sxx_gv, sxw_gkv, sww_gkkv : ndarray
        Centred sums of squares and cross-products: vertex-vertex ``(G + 1, V)``,
        vertex-w ``(G + 1, K, V)``, w-w ``(G + 1, K, K, V)``.
    """

    n_gv: np.ndarray
    mean_x_gv: np.ndarray
    mean_w_gkv: np.ndarray
    sxx_gv: np.ndarray
    sxw_gkv: np.ndarray
    sww_gkkv: np.ndarray

    @staticmethod
    def nbytes(n_groups: int, n_w: int, n_vertices: int = N_VERTICES) -> int:
        """Bytes one set of moments holds for ``n_groups`` levels and ``n_w`` w columns."""
        return (n_groups + 1) * n_vertices * (n_w * n_w + 2 * n_w + 3) * 8

    @classmethod
    def empty(cls, n_groups: int, n_w: int, n_vertices: int = N_VERTICES
              ) -> GroupedVertexMoments:
        """Moments of no data for ``n_groups`` levels and ``n_w`` w columns."""
        g, k, v = n_groups + 1, n_w, n_vertices
        return cls(np.zeros((g, v), np.int64), np.zeros((g, v)), np.zeros((g, k, v)),
                   np.zeros((g, v)), np.zeros((g, k, v)), np.zeros((g, k, k, v)))

    @classmethod
    def from_block(cls, values_nv: np.ndarray, w_nk: np.ndarray, group_n: np.ndarray,
                   n_groups: int) -> GroupedVertexMoments:
        """Moments of one block of rows.

        Parameters
        ----------
        values_nv : ndarray of shape (n, V)
            Vertex values (NaN: missing).
        w_nk : ndarray of shape (n, K)
            Memorability (rows where it is not finite are left out), then the covariates
            (finite except in rows of group ``n_groups``).
        group_n : ndarray of shape (n,) int
            Group of each row, ``0..n_groups`` (``n_groups``: category or covariate missing).
        n_groups : int
            Number of category levels G.
        """
        w_nk = np.asarray(w_nk, dtype=np.float64)
        if values_nv.ndim != 2 or w_nk.ndim != 2 or not (
                values_nv.shape[0] == w_nk.shape[0] == len(group_n)):
            raise InputError(f"expected values (n, V), w (n, K) and groups (n,); got "
                             f"{values_nv.shape}, {w_nk.shape}, {np.shape(group_n)}")
        keep = np.isfinite(w_nk[:, 0])
        x_nv = np.asarray(values_nv if keep.all() else values_nv[keep], dtype=np.float64)
        w_nk = np.where(np.isfinite(w_nk[keep]), w_nk[keep], 0.0)
        n_rows, n_vertices = x_nv.shape
        n_w = w_nk.shape[1]
        # every group at once through one-hot products (BLAS), w centred per group first
        onehot_ng = np.zeros((n_rows, n_groups + 1))
        onehot_ng[np.arange(n_rows), np.asarray(group_n)[keep]] = 1.0
        count_g = onehot_ng.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_w_gk = np.where(count_g[:, None] > 0,
                                 (onehot_ng.T @ w_nk) / count_g[:, None], 0.0)
        wc_nk = w_nk - onehot_ng @ mean_w_gk
        by_w_ngk = onehot_ng[:, :, None] * wc_nk[:, None, :]
        present_nv = np.isfinite(x_nv)
        if present_nv.all():
            sums = np.concatenate([onehot_ng, by_w_ngk.reshape(n_rows, -1)], 1).T @ x_nv
            n_gv = np.repeat(count_g[:, None], n_vertices, 1)
            sum_wc_gkv = np.zeros((n_groups + 1, n_w, n_vertices))
            sum_ww_gkkv = np.repeat(np.einsum("ngk,nl->gkl", by_w_ngk, wc_nk)[..., None],
                                    n_vertices, 3)
        else:
            x_nv = np.where(present_nv, x_nv, 0.0)
            present_nv = present_nv.astype(np.float64)
            sums = np.concatenate([onehot_ng, by_w_ngk.reshape(n_rows, -1)], 1).T @ x_nv
            n_gv = onehot_ng.T @ present_nv
            sum_wc_gkv = (by_w_ngk.reshape(n_rows, -1).T @ present_nv).reshape(
                n_groups + 1, n_w, n_vertices)
            by_ww = by_w_ngk[:, :, :, None] * wc_nk[:, None, None, :]
            sum_ww_gkkv = (by_ww.reshape(n_rows, -1).T @ present_nv).reshape(
                n_groups + 1, n_w, n_w, n_vertices)
        sum_x_gv = sums[: n_groups + 1]
        sum_xw_gkv = sums[n_groups + 1 :].reshape(n_groups + 1, n_w, n_vertices)
        sum_xx_gv = onehot_ng.T @ (x_nv * x_nv)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_x_gv = np.where(n_gv > 0, sum_x_gv / n_gv, 0.0)
            mean_wc_gkv = np.where(n_gv[:, None] > 0, sum_wc_gkv / n_gv[:, None], 0.0)
        return cls(
            n_gv.astype(np.int64),
            mean_x_gv,
            mean_wc_gkv + mean_w_gk[:, :, None],
            np.maximum(sum_xx_gv - n_gv * mean_x_gv**2, 0.0),
            sum_xw_gkv - n_gv[:, None] * mean_x_gv[:, None] * mean_wc_gkv,
            sum_ww_gkkv - n_gv[:, None, None] * mean_wc_gkv[:, :, None] * mean_wc_gkv[:, None],
        )

    def merge(self, other: GroupedVertexMoments) -> GroupedVertexMoments:
        """Moments of the union of the two sets of rows, group by group (pairwise update)."""
        w_b, cross = merge_weights(self.n_gv, other.n_gv)
        dx = other.mean_x_gv - self.mean_x_gv
        dw = other.mean_w_gkv - self.mean_w_gkv
        return GroupedVertexMoments(
            self.n_gv + other.n_gv,
            self.mean_x_gv + dx * w_b,
            self.mean_w_gkv + dw * w_b[:, None],
            self.sxx_gv + other.sxx_gv + dx * dx * cross,
            self.sxw_gkv + other.sxw_gkv + dx[:, None] * dw * cross[:, None],
            self.sww_gkkv + other.sww_gkkv
            + dw[:, :, None] * dw[:, None, :] * cross[:, None, None],
        )

    def pooled(self) -> VertexMoments:
        """Moments of (vertex, memorability) over every row, all groups merged (the raw map)."""
        total = VertexMoments.empty(self.n_gv.shape[1])
        for g in range(self.n_gv.shape[0]):
            total = total.merge(VertexMoments(
                self.n_gv[g], self.mean_x_gv[g], self.mean_w_gkv[g, 0], self.sxx_gv[g],
                self.sww_gkkv[g, 0, 0], self.sxw_gkv[g, 0]))
        return total

    def n_controls(self) -> np.ndarray:
        """Control columns per vertex, ``(V,)``: category levels present − 1 + covariates."""
        levels_v = (self.n_gv[:-1] > 0).sum(0)
        return np.maximum(levels_v - 1, 0) + self.mean_w_gkv.shape[1] - 1

    def partial_r(self) -> np.ndarray:
        """Partial r of each vertex with memorability given category and covariates, ``(V,)``.

        The within-category moments are summed over the categories; the covariates are
        partialled out of the pooled matrix per vertex (``S_ab·z = S_ab − S_az S_zz⁺ S_zb``).
        NaN where fewer than ``controls + 3`` rows remain or the controls explain the vertex
        or memorability completely.
        """
        n_v = self.n_gv[:-1].sum(0)
        sxx_v = self.sxx_gv[:-1].sum(0)
        sxw_kv = self.sxw_gkv[:-1].sum(0)
        sww_kkv = self.sww_gkkv[:-1].sum(0)
        sxy_v, syy_v = sxw_kv[0].copy(), sww_kkv[0, 0].copy()
        scale_x, scale_y = sxx_v.copy(), syy_v.copy()
        if sxw_kv.shape[0] > 1:
            szz_vkk = np.moveaxis(sww_kkv[1:, 1:], -1, 0)
            rhs_vk2 = np.stack([sxw_kv[1:].T, sww_kkv[1:, 0].T], axis=-1)
            sol_vk2 = np.linalg.pinv(szz_vkk) @ rhs_vk2
            sxx_v = sxx_v - np.einsum("vk,vk->v", rhs_vk2[..., 0], sol_vk2[..., 0])
            sxy_v = sxy_v - np.einsum("vk,vk->v", rhs_vk2[..., 0], sol_vk2[..., 1])
            syy_v = syy_v - np.einsum("vk,vk->v", rhs_vk2[..., 1], sol_vk2[..., 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            r_v = sxy_v / np.sqrt(sxx_v * syy_v)
        undefined = ((n_v - self.n_controls() < 3) | (sxx_v <= 1e-10 * scale_x)
                     | (syy_v <= 1e-10 * scale_y) | (scale_x <= 0) | (scale_y <= 0))
        r_v[undefined] = np.nan
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
    batches: Iterable[pa.RecordBatch], columns: Sequence[str], vertices_column: str, rows: int
) -> Iterator[tuple[list[pa.Array], dict[str, np.ndarray]]]:
    """Regroup batches of any size into blocks of ``rows`` rows: (vertex column pieces,
    the other ``columns`` as numpy arrays)."""
    pieces, parts, filled = [], {c: [] for c in columns}, 0
    for batch in batches:
        arrays = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}
        column = batch.column(vertices_column)
        start = 0
        while start < batch.num_rows:
            take = min(rows - filled, batch.num_rows - start)
            pieces.append(column.slice(start, take))
            for c in columns:
                parts[c].append(arrays[c][start : start + take])
            filled += take
            start += take
            if filled == rows:
                yield pieces, {c: np.concatenate(parts[c]) for c in columns}
                pieces, parts, filled = [], {c: [] for c in columns}, 0
    if filled:
        yield pieces, {c: np.concatenate(parts[c]) for c in columns}


def moments_of_batches(
    batches: Iterable[pa.RecordBatch],
    memorability_column: str,
    *,
    controls: Controls | None = None,
    vertices_column: str = VERTICES_COLUMN,
    block_rows: int = BLOCK_ROWS,
    n_threads: int = 2,
) -> VertexMoments | GroupedVertexMoments:
    """Stream record batches (vertex column + memorability) into one :class:`VertexMoments`.

    Batches of any size (score tables often hold one small file per scoring batch) are
    regrouped into blocks of ``block_rows`` rows. ``n_threads`` threads each decode a block into
    their own float64 buffer and reduce it (numpy releases the GIL), while this thread reads
    ahead; blocks are merged in table order, so the result does not depend on ``n_threads``.
    Memory: ``n_threads × block_rows × 20484 × 8`` bytes of buffers. With ``controls`` (the
    batches then hold their columns too) the result is a :class:`GroupedVertexMoments`.
    """
    if n_threads < 1:
        raise InputError(f"n_threads must be at least 1; got {n_threads}")
    free = queue.SimpleQueue()
    for _ in range(n_threads):
        free.put(np.empty((block_rows, N_VERTICES), dtype=np.float64))

    def reduce_block(pieces: list[pa.Array], columns: dict[str, np.ndarray]):
        buffer_nv = free.get()
        try:
            start = 0
            for piece in pieces:
                stop = start + len(piece)
                decode_vertices(piece, dtype=np.float64, out=buffer_nv[start:stop])
                start = stop
            y_n = columns[memorability_column].astype(np.float64)
            if controls is None:
                return VertexMoments.from_block(buffer_nv[:start], y_n)
            return GroupedVertexMoments.from_block(buffer_nv[:start],
                                                   *controls.encode(columns, y_n),
                                                   controls.n_groups)
        finally:
            free.put(buffer_nv)

    if controls is None:
        total, columns = VertexMoments.empty(), [memorability_column]
    else:
        total = GroupedVertexMoments.empty(controls.n_groups, 1 + len(controls.covariates))
        columns = list(dict.fromkeys([memorability_column, *controls.columns]))
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(n_threads) as pool:
        for pieces, block in _blocks(batches, columns, vertices_column, block_rows):
            if len(pending) == n_threads:
                total = total.merge(pending.popleft().result())
            pending.append(pool.submit(reduce_block, pieces, block))
        while pending:
            total = total.merge(pending.popleft().result())
    return total


def vertex_moments(
    path_or_dataset: PathOrDataset,
    memorability_column: str = "memorability",
    *,
    controls: Controls | None = None,
    vertices_column: str = VERTICES_COLUMN,
    filters=None,
    filesystem=None,
    block_rows: int = BLOCK_ROWS,
    n_threads: int = 2,
) -> VertexMoments | GroupedVertexMoments:
    """One streaming pass over a score table (or one of its files) giving per-vertex moments.

    Parameters
    ----------
    path_or_dataset : str, os.PathLike or pyarrow.dataset.Dataset
        Score table, or a single Parquet file of it (the map step of a map-reduce).
    memorability_column : str
        Numeric column correlated with each vertex.
    controls : Controls, optional
        Category and covariates of the partial map: the result is then a
        :class:`GroupedVertexMoments`.
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
    VertexMoments or GroupedVertexMoments
    """
    extra = [] if controls is None else controls.columns
    batches = iter_batches(
        path_or_dataset,
        columns=list(dict.fromkeys([vertices_column, memorability_column, *extra])),
        filters=filters,
        batch_size=block_rows,
        filesystem=filesystem,
    )
    return moments_of_batches(
        batches,
        memorability_column,
        controls=controls,
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


def mask_unlabelled(map_v: np.ndarray, labelled_v: np.ndarray | None) -> np.ndarray:
    """A copy of a vertex map with the vertices outside the atlas (the medial wall) set to NaN.

    Encoder maps are finite on the medial wall, where no cortical area lies; sign coherence and
    the spin test must not draw those values into ROIs (a NaN vertex carries no value in
    :func:`neuromem.analysis.spin.spin_test`).

    Parameters
    ----------
    map_v : ndarray of shape (20484,)
    labelled_v : ndarray of bool, shape (20484,), or None
        Vertices with an atlas label (:attr:`neuromem.cortex.rois.RoiSet.labelled_v`); None
        keeps every vertex.
    """
    masked_v = np.array(map_v, dtype=np.float64)
    if labelled_v is not None:
        masked_v[~np.asarray(labelled_v, dtype=bool)] = np.nan
    return masked_v


def mask_record(labelled_v: np.ndarray | None, atlas: str) -> dict:
    """The ``results.json`` record of the vertex mask: rule, atlas, counts, excluded indices."""
    excluded = [] if labelled_v is None else np.flatnonzero(~np.asarray(labelled_v)).tolist()
    return {
        "rule": "vertices with no atlas label (the medial wall) are left out of sign coherence "
                "and spin tests",
        "atlas": atlas,
        "n_excluded": len(excluded),
        "n_excluded_left": sum(1 for v in excluded if v < N_VERTICES_HEMI),
        "n_excluded_right": sum(1 for v in excluded if v >= N_VERTICES_HEMI),
        "excluded_vertices": excluded,
    }


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
