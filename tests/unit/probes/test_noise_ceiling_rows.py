"""NSD's noise ceiling from the repetition counts of the rows a score is computed on."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.errors import InputError
from neuromem.probes.nsd_betas import noise_ceiling


def test_ceiling_uses_the_test_rows_repetition_counts():
    ncsnr_v = np.array([0.5, 1.0, 2.0])
    n_reps_m = np.array([3, 3, 3, 1, 1, 2])  # training images seen 3 times, test ones less
    test = np.array([3, 4, 5])
    want = 100 * ncsnr_v**2 / (ncsnr_v**2 + np.mean(1 / np.array([1, 1, 2])))  # manual's formula
    np.testing.assert_allclose(noise_ceiling(ncsnr_v, n_reps_m, rows=test), want)
    mask = np.isin(np.arange(6), test)
    np.testing.assert_allclose(noise_ceiling(ncsnr_v, n_reps_m, rows=mask), want)
    assert not np.allclose(noise_ceiling(ncsnr_v, n_reps_m), want)  # all rows: another ceiling
    with pytest.raises(InputError, match="at least one trial"):
        noise_ceiling(ncsnr_v, n_reps_m, rows=np.zeros(6, bool))
