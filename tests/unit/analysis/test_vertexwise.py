"""Vertex-level correlations streamed over a score table, against numpy and scipy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from neuromem.analysis import (
    VertexMoments,
    merge_all,
    roi_sign_coherence,
    vertex_moments,
    vertex_pearson,
    vertex_spearman,
)
from neuromem.errors import InputError, UnknownNameError
from neuromem.scoring.table import table_files, vertices_to_arrow

V = 20484
N = 150


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Three files, row groups of 20; a vertex effect on the first 500 vertices; NaNs."""
    rng = np.random.default_rng(2)
    memorability = rng.uniform(0.4, 0.9, N)
    responses = rng.standard_normal((N, V)) * 2 + 5
    responses[:, :500] += 8 * (memorability[:, None] - 0.65) * np.linspace(-1, 1, 500)
    responses = responses.astype(np.float16)
    responses[[4, 60], 7] = np.nan  # missing vertex values
    responses[:, 9] = 1.0  # a constant vertex
    memorability[[11, 99]] = np.nan
    root = tmp_path_factory.mktemp("table")
    for i, rows in enumerate(np.array_split(np.arange(N), 3)):
        pq.write_table(
            pa.table(
                {
                    "memorability": memorability[rows],
                    "vertices": vertices_to_arrow(responses[rows]),
                }
            ),
            root / f"part-{i}.parquet",
            row_group_size=20,
        )
    return root, responses, memorability


def _reference_r(responses, memorability, vertices):
    """np.corrcoef of each vertex with memorability over that vertex's complete rows."""
    keep = np.isfinite(memorability)
    x_nv = responses[keep].astype(np.float64)
    y = memorability[keep]
    r = np.full(V, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for v in vertices:
            ok = np.isfinite(x_nv[:, v])
            r[v] = np.corrcoef(x_nv[ok, v], y[ok])[0, 1]
    return r


def test_streaming_pearson_equals_corrcoef(table):
    root, responses, memorability = table
    got = vertex_pearson(root, block_rows=16)
    vertices = np.r_[0:600, np.random.default_rng(0).choice(np.arange(600, V), 900, replace=False)]
    ref = _reference_r(responses, memorability, vertices)
    assert np.isnan(got[9]) and np.isnan(ref[9]) and np.isfinite(got[7])
    assert np.isfinite(got).sum() == V - 1
    np.testing.assert_allclose(got[vertices], ref[vertices], rtol=0, atol=1e-12, equal_nan=True)
    moments = vertex_moments(root)
    assert moments.n_v[0] == N - 2 and moments.n_v[7] == N - 4


def test_merge_of_parts_equals_whole(table):
    root, _, _ = table
    whole = vertex_moments(root)
    files = table_files(root)
    parts = [vertex_moments(f) for f in files]
    merged = merge_all(parts[::-1])  # order does not matter
    for name in ("n_v", "mean_x_v", "mean_y_v", "m2_x_v", "m2_y_v", "c_xy_v"):
        np.testing.assert_allclose(
            getattr(merged, name), getattr(whole, name), rtol=1e-11, atol=1e-9
        )
    np.testing.assert_allclose(merged.pearson_r(), whole.pearson_r(), atol=1e-12, equal_nan=True)
    one_thread = vertex_moments(root, n_threads=1, block_rows=32)
    np.testing.assert_array_equal(
        vertex_moments(root, n_threads=3, block_rows=32).c_xy_v, one_thread.c_xy_v
    )
    np.testing.assert_allclose(
        one_thread.pearson_r(), whole.pearson_r(), atol=1e-12, equal_nan=True
    )
    empty_merge = VertexMoments.empty().merge(parts[0])
    np.testing.assert_array_equal(empty_merge.pearson_r(), parts[0].pearson_r())
    with pytest.raises(InputError, match="no rows"):
        merge_all([])


def test_streaming_spearman_is_exact(table):
    root, responses, memorability = table
    got = vertex_spearman(root, max_bytes=N * 8 * 3000)  # several vertex chunks
    keep = np.isfinite(memorability)
    for v in [0, 3, 7, 250, 499, 5000, V - 1]:
        x = responses[keep, v].astype(np.float64)
        ok = np.isfinite(x)
        ref = stats.spearmanr(x[ok], memorability[keep][ok]).statistic
        assert got[v] == pytest.approx(ref, abs=1e-12), v
    assert np.isnan(got[9])


def test_sign_coherence_counts_finite_vertices():
    r_v = np.zeros(V)
    r_v[:4] = [-0.2, -0.1, 0.3, np.nan]
    out = roi_sign_coherence(r_v, {"A": np.arange(4), "B": np.array([3])})
    assert out["A"] == pytest.approx((2 / 3, 1 / 3))
    assert all(np.isnan(out["B"]))


def test_vertex_errors(tmp_path, table):
    root, _, _ = table
    with pytest.raises(UnknownNameError, match="mem_score"):
        vertex_pearson(root, "mem_score")
    pq.write_table(
        pa.table({"memorability": [0.5], "vertices": pa.array([b"\0" * 40960], pa.binary(40960))}),
        tmp_path / "short.parquet",
    )
    with pytest.raises(InputError, match="20484"):
        vertex_pearson(tmp_path / "short.parquet")
    with pytest.raises(InputError, match="n_threads"):
        vertex_pearson(root, n_threads=0)
    with pytest.raises(InputError, match=r"\(n, V\)"):
        VertexMoments.from_block(np.zeros((3, V)), np.zeros(4))
