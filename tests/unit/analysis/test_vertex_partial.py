"""Partial vertex maps (issue 12.3): per-category mergeable moments against pingouin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.analysis.vertexwise import (
    Controls,
    GroupedVertexMoments,
    roi_sign_coherence,
    vertex_moments,
    vertex_pearson,
)
from neuromem.scoring.table import vertices_to_arrow

V = 20484
N = 160
CHECKED = [0, 3, 7, 120, 4000]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Three files (row groups of 25): category and age drive vertices 0..199 and memorability;
    vertices 100..199 also follow memorability within category. Missing values everywhere."""
    rng = np.random.default_rng(4)
    category = rng.choice(["face", "object", "scene"], N).astype(object)
    age = rng.normal(size=N)
    scene = (category == "scene").astype(float)
    memorability = 0.6 + 0.2 * scene + 0.05 * age + 0.05 * rng.standard_normal(N)
    responses = rng.standard_normal((N, V)) + 3
    responses[:, :200] += 3 * scene[:, None] + age[:, None]
    responses[:, 100:200] += 40 * (memorability - 0.6 - 0.2 * scene)[:, None]
    responses = responses.astype(np.float16)
    responses[[5, 50], 7] = np.nan
    category[[2, 30]] = None
    age[9] = np.nan
    memorability[[11, 99]] = np.nan
    root = tmp_path_factory.mktemp("partial")
    for i, rows in enumerate(np.array_split(np.arange(N), 3)):
        pq.write_table(pa.table({"memorability": memorability[rows],
                                 "category": pa.array(category[rows], pa.string()),
                                 "age": age[rows],
                                 "vertices": vertices_to_arrow(responses[rows])}),
                       root / f"part-{i}.parquet", row_group_size=25)
    return root, responses.astype(np.float64), memorability, category, age


CONTROLS = Controls("category", ("face", "object", "scene"), ("age",))


def _pingouin(responses, memorability, category, age, v, covar):
    frame = pd.DataFrame({"x": responses[:, v], "y": memorability, "age": age,
                          "object": (category == "object").astype(float),
                          "scene": (category == "scene").astype(float)})
    frame.loc[pd.isna(category), ["object", "scene"]] = np.nan
    frame = frame[["x", "y", *covar]].dropna()
    return pg.partial_corr(frame, "x", "y", covar=covar)["r"].iloc[0]


@pytest.mark.parametrize("controls,covar", [
    (CONTROLS, ["object", "scene", "age"]),
    (Controls("category", ("face", "object", "scene")), ["object", "scene"]),
    (Controls(None, (), ("age",)), ["age"]),
])
def test_streamed_partial_r_equals_pingouin(table, controls, covar):
    root, responses, memorability, category, age = table
    moments = vertex_moments(root, controls=controls, block_rows=32)
    partial_v = moments.partial_r()
    for v in CHECKED:
        expected = _pingouin(responses, memorability, category,
                             age if controls.covariates else np.zeros(N), v, covar)
        assert partial_v[v] == pytest.approx(expected, abs=1e-9), v
    # the same pass gives the raw map over every row with a memorability
    np.testing.assert_allclose(moments.pooled().pearson_r(), vertex_pearson(root), atol=1e-12)


def test_merge_of_blocks_does_not_depend_on_the_split(table):
    root, responses, memorability, category, age = table
    w_nk, group_n = CONTROLS.encode({"category": category, "age": age}, memorability)
    whole = GroupedVertexMoments.from_block(responses, w_nk, group_n, 3)
    parts = [GroupedVertexMoments.from_block(responses[rows], w_nk[rows], group_n[rows], 3)
             for rows in np.array_split(np.random.default_rng(0).permutation(N), 5)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    np.testing.assert_allclose(merged.partial_r(), whole.partial_r(), atol=1e-10)
    assert (merged.n_controls() == 3).all()


def test_category_confound_coherent_raw_but_not_partial(table):
    """Vertices 0..99 follow memorability only through category and age: every raw r is
    positive, the partial map is incoherent; vertices 100..199 stay positive in both."""
    root = table[0]
    moments = vertex_moments(root, controls=CONTROLS)
    rois = {"confounded": np.arange(100), "real": np.arange(100, 200)}
    raw = roi_sign_coherence(moments.pooled().pearson_r(), rois)
    partial = roi_sign_coherence(moments.partial_r(), rois)
    assert raw["confounded"][1] == 1.0 and raw["real"][1] == 1.0
    assert max(partial["confounded"]) < 0.75 and partial["real"][1] == 1.0
