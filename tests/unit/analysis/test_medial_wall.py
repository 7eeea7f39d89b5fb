"""Medial-wall mask of vertex statistics (issue 12.2): vertices with no atlas label carry no value."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.analysis import spin_indices, spin_test
from neuromem.analysis.correlation import bh_fdr
from neuromem.analysis.vertexwise import mask_record, mask_unlabelled, roi_sign_coherence
from neuromem.cortex.rois import load_roi_set
from neuromem.cortex.surface import N_VERTICES, sphere_coords


@pytest.fixture(scope="module")
def roi_set():
    return load_roi_set("default")


@pytest.fixture(scope="module")
def spins():
    return spin_indices(sphere_coords(), 200, seed=1)


def _noise_map(seed: int) -> np.ndarray:
    return 0.02 * np.random.default_rng(seed).standard_normal(N_VERTICES)


def test_default_roi_set_knows_its_medial_wall(roi_set):
    wall_v = ~roi_set.labelled_v
    assert wall_v.sum() == 1712 and wall_v[: N_VERTICES // 2].sum() == 864
    for idx in roi_set.indices.values():
        assert roi_set.labelled_v[idx].all()
    record = mask_record(roi_set.labelled_v, roi_set.atlas)
    assert record["n_excluded"] == 1712 and record["n_excluded_left"] == 864
    assert record["excluded_vertices"] == np.flatnonzero(wall_v).tolist()
    masked_v = mask_unlabelled(np.ones(N_VERTICES), roi_set.labelled_v)
    assert np.isnan(masked_v[wall_v]).all() and (masked_v[~wall_v] == 1).all()


def test_signal_only_on_the_medial_wall_gives_no_significant_roi(roi_set, spins):
    map_v = _noise_map(0)
    map_v[~roi_set.labelled_v] = -0.6
    masked_v = mask_unlabelled(map_v, roi_set.labelled_v)
    results = spin_test(masked_v, roi_set.indices, indices_sv=spins)
    for key in ("p_mean_r", "p_coherence"):
        q = bh_fdr([getattr(r, key) for r in results.values()])
        assert np.nanmin(q) > 0.05, key
    coherence = roi_sign_coherence(masked_v, roi_set.indices)
    assert max(max(c) for c in coherence.values()) < 0.8


def test_effect_next_to_the_medial_wall_survives_its_values(roi_set, spins):
    """Unmasked, rotations drag the medial wall's (meaningless, large) encoder values into RSC's
    null maps and hide RSC's real effect; masked, the effect is found."""
    map_v = _noise_map(1)
    map_v[roi_set.indices["RSC"]] -= 0.3
    map_v[~roi_set.labelled_v] = 0.9
    masked = spin_test(mask_unlabelled(map_v, roi_set.labelled_v), roi_set.indices,
                       indices_sv=spins)
    unmasked = spin_test(map_v, roi_set.indices, indices_sv=spins)
    assert masked["RSC"].p_mean_r < 0.02 and masked["RSC"].p_coherence < 0.02
    assert unmasked["RSC"].p_mean_r > 0.05
