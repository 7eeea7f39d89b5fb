"""Cross-evaluation matrices: column z-scores and the diagonal's ranks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from neuromem.errors import InputError
from neuromem.generation.crosseval import diagonal_ranks, summarise, zscore_columns


def test_zscore_and_diagonal_ranks():
    raw_tm = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 5.0], [2.0, 0.0, 1.0]])
    z_tm = zscore_columns(raw_tm)
    np.testing.assert_allclose(z_tm, scipy.stats.zscore(raw_tm, axis=0))
    np.testing.assert_array_equal(zscore_columns(np.ones((3, 2))), np.zeros((3, 2)))
    row_rank, column_rank = diagonal_ranks(np.array([[3, 1, 0], [1, 2, 5], [2, 0, 1]]))
    np.testing.assert_array_equal(row_rank, [1, 2, 2])
    np.testing.assert_array_equal(column_rank, [1, 1, 2])
    with pytest.raises(InputError, match="square"):
        diagonal_ranks(np.zeros((2, 3)))


def test_summary_gain_is_over_the_unguided_baseline():
    raw_tm = np.array([[3.0, 1.0], [1.0, 2.0]])
    summary = summarise(raw_tm, np.array([1.0, 1.0]), ["roi_A", "roi_B"])
    np.testing.assert_allclose(summary["gain_over_unguided"], [[2.0, 0.0], [0.0, 1.0]])
    assert summary["diagonal_rank_in_row"] == {"roi_A": 1, "roi_B": 1}
    assert summary["chance_rank"] == 1.5
