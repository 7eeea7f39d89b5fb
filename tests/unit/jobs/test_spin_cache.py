"""Spin rotations are computed once per (spins, seed) and reused by later decompositions."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.analysis import spin
from neuromem.cortex.surface import sphere_coords
from neuromem.jobs import decompose


def test_spin_indices_are_cached_and_equal_to_a_fresh_computation(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROMEM_CACHE", str(tmp_path))
    first = decompose.cached_spin_indices(3, 7)
    np.testing.assert_array_equal(first, spin.spin_indices(sphere_coords(), 3, 7))
    assert (tmp_path / "spins" / "fsaverage5_3_seed7.npy").exists()

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(spin, "spin_indices", no_recompute)
    ticks = []
    np.testing.assert_array_equal(decompose.cached_spin_indices(3, 7, on_spin=lambda: ticks.append(1)), first)
    assert len(ticks) == 3  # the progress bar still completes
    (tmp_path / "spins" / "fsaverage5_3_seed7.npy").write_bytes(b"damaged")
    with pytest.raises(AssertionError, match="recomputed"):  # a damaged file is recomputed
        decompose.cached_spin_indices(3, 7)
