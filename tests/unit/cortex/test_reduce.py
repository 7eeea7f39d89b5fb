"""ROI means of vertex responses, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.errors import VertexCountError


@pytest.fixture(scope="module")
def reducer() -> RoiReducer:
    return RoiReducer(load_roi_set("default"))


def test_numpy_means_equal_per_roi_numpy_mean(reducer):
    responses_bv = np.random.default_rng(0).normal(size=(5, 20484)).astype(np.float32)
    rois_br = reducer(responses_bv)
    assert rois_br.shape == (5, 39) and rois_br.dtype == np.float32
    assert reducer.names[0] == "V1" and reducer.column_names[0] == "roi_V1"
    for r, roi in enumerate(reducer.names):
        expected_b = responses_bv[:, reducer.roi_set.indices[roi]].astype(np.float64).mean(axis=1)
        np.testing.assert_allclose(rois_br[:, r], expected_b, rtol=1e-5, atol=1e-6)
    # float16 vertex tables are widened before averaging
    np.testing.assert_allclose(reducer(responses_bv.astype(np.float16)), rois_br, atol=2e-3)


def test_torch_agrees_with_numpy_and_keeps_dtype(reducer):
    responses_bv = np.random.default_rng(1).normal(size=(3, 20484)).astype(np.float32)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out = reducer(torch.from_numpy(responses_bv).to(dtype))
        assert out.dtype == dtype and out.shape == (3, 39)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        np.testing.assert_allclose(out.float().numpy(), reducer(responses_bv), atol=tol, rtol=tol)
    assert reducer.torch_weights("cpu", torch.float32) is reducer.torch_weights(
        "cpu", torch.float32
    )


def test_torch_gradient_is_one_over_n_on_roi_vertices(reducer):
    responses_bv = torch.randn(2, 20484, dtype=torch.float64, requires_grad=True)
    r = reducer.names.index("lh_FFA")
    reducer(responses_bv)[:, r].sum().backward()
    indices = reducer.roi_set.indices["lh_FFA"]
    expected_bv = torch.zeros(2, 20484, dtype=torch.float64)
    expected_bv[:, indices] = 1.0 / indices.size
    torch.testing.assert_close(responses_bv.grad, expected_bv)
    assert indices.size == 46


def test_wrong_vertex_count(reducer):
    with pytest.raises(VertexCountError, match="20484"):
        reducer(np.zeros((2, 10242), dtype=np.float32))
    with pytest.raises(VertexCountError):
        reducer(torch.zeros(2, 20483))
