"""Synthetic fixtures: image kinds differ as documented, scores are planted, writers are seeded."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from neuromem.data import synthetic
from neuromem.errors import InputError


def test_scene_and_object_images_differ_as_documented():
    rng = np.random.default_rng(0)
    for _ in range(10):
        obj = synthetic.sample_image("object", rng, (60, 80)).astype(float)
        scene = synthetic.sample_image("scene", rng, (60, 80)).astype(float)
        assert obj.shape == scene.shape == (60, 80, 3)
        corners = np.stack([obj[0, 0], obj[0, -1], obj[-1, 0], obj[-1, -1]])
        assert np.ptp(corners, axis=0).max() < 12  # plain background around the object
        assert np.abs(obj[30, 40] - obj[0, 0]).max() > 20  # something different in the centre
        # scenes: textured ground at the bottom, smooth sky at the top
        assert scene[-10:].std(axis=(0, 1)).mean() > 3 * scene[:5].std(axis=(0, 1)).mean()
        assert scene[:3, :, 2].mean() > scene[:3, :, 0].mean()  # blue sky
    with pytest.raises(InputError, match="kind"):
        synthetic.sample_image("face", rng, 8)


def test_planted_memorability_favours_objects():
    rng = np.random.default_rng(1)
    kinds = synthetic.sample_categories(400, rng)
    assert (kinds == "object").sum() == 200
    scores = synthetic.sample_memorability(kinds, rng)
    assert 0.1 < scores[kinds == "object"].mean() - scores[kinds == "scene"].mean() < 0.2
    assert scores.std() > 0.05 and ((scores >= 0) & (scores <= 1)).all()


def test_lamem_writer_partitions_and_is_seeded(tmp_path):
    first = synthetic.write_lamem(tmp_path / "a", n_images=80, seed=2, image_size=24)
    again = synthetic.write_lamem(tmp_path / "b", n_images=80, seed=2, image_size=24, processes=2)
    assert first.equals(again)
    for k in range(1, 6):
        listed = []
        for part in ("train", "val", "test"):
            lines = (tmp_path / "a" / "splits" / f"{part}_{k}.txt").read_text().splitlines()
            listed += [line.split()[0] for line in lines]
        assert sorted(listed) == sorted(first["image_id"])  # each split is a partition
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert names == list(first["image_id"])
    match, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "a" / "images", tmp_path / "b" / "images", names, shallow=False
    )
    assert len(match) == 80 and not mismatch and not errors  # same bytes with 2 processes
